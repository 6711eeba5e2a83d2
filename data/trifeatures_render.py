"""Trifeatures' images: the attribute vocabulary (10 shapes x 10 textures x 10 colours) and the renderer, the
reference's formulas (Hermann & Lampinen 2020); data/trifeatures.py builds the data set from them."""
from __future__ import annotations

import numpy as np
from scipy import ndimage, special

SHAPES = ("triangle", "square", "plus", "circle", "tee", "rhombus", "pentagon", "star", "fivesquare", "trapezoid")
TEXTURES = ("solid", "stripes", "grid", "hexgrid", "dots", "noise", "triangles", "zigzags", "rain", "pluses")
COLOURS = ("red", "green", "blue", "yellow", "pink", "cyan", "purple", "ocean", "orange", "white")
COLOUR_RGB = np.array(
    [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0.4, 1), (0, 1, 1), (0.3, 0, 0.5), (0.1, 0.4, 0.5),
     (1, 0.6, 0), (1, 1, 1)],
    dtype=np.float64,
)
BACKGROUND_RGB = np.array([0.5, 0.5, 0.5], dtype=np.float64)
# RGB = m*colour + (1-m)*bg with a binary m, times 255, cast to uint8 (truncation): a lookup table is exact.
COLOUR_U8 = (COLOUR_RGB * 255).astype(np.uint8)
BACKGROUND_U8 = (BACKGROUND_RGB * 255).astype(np.uint8)

DEFAULT_SIZE = 224
TEXTURE_PERIOD = 10


# ----------------------------------------------------------------------------------------------------------------
# Geometry


def shape_template(name: str, size: int = 128) -> np.ndarray:
    """Binary (size, size) uint8 template of a shape; the reference's formulas at size 128, scaled constants otherwise."""
    if name not in SHAPES:
        raise ValueError(f"name: unknown shape {name!r}; valid: {', '.join(SHAPES)}")
    if size < 8:
        raise ValueError(f"size: must be >= 8, got {size}")
    S = size
    h = S // 2
    i = np.arange(S, dtype=np.float64)[:, None]
    j = np.arange(S, dtype=np.float64)[None, :]
    full = np.ones((S, S), dtype=bool)
    if name == "square":
        m = full
    elif name == "circle":
        m = (i + 0.5 - h) ** 2 + (j + 0.5 - h) ** 2 < h**2
    elif name == "triangle":
        m = np.abs(j - h) - (i // 2) < 1
    elif name in ("plus", "tee"):
        w = S // 6
        vertical = (j >= h - w) & (j <= h + w)
        horizontal = ((i >= h - w) & (i <= h + w)) if name == "plus" else (i < S // 3)
        m = vertical | horizontal
    elif name == "rhombus":
        d = j - h + (i // 2)
        m = (d > 0) & (d < h)
    elif name == "pentagon":
        line = int(0.4 * S)
        x_off = (i - line) // 3.1
        m = np.where(i < line, np.abs(j - h) - 1.25 * i < 1, (x_off < j) & (j < S - x_off))
    elif name == "star":
        line, line2, line3 = int(0.4 * S), int(0.6 * S), int(0.55 * S)
        top = (i < line) & (np.abs(j - h) - (i // 4) < 1)
        x_off = 2.4 * (i - line)
        band = (i >= line) & (i < line2) & (x_off < j) & (j < S - x_off)
        a = 0.33 * S - 0.43 * (i - line3)
        b = 0.62 * S - 1.05 * (i - line3)
        legs = (i >= line3) & (((a < j) & (j < b)) | ((a < S - j) & (S - j < b)))
        m = top | band | legs
    elif name == "fivesquare":
        c1, c2 = S // 3, int(2 * S / 3)
        rb = (i >= c1).astype(int) + (i >= c2)
        cb = (j >= c1).astype(int) + (j >= c2)
        m = ((rb != 1) & (cb != 1)) | ((rb == 1) & (cb == 1))
    else:  # trapezoid
        x_off = i // 3.1
        m = (x_off < j) & (j < S - x_off)
    return np.broadcast_to(m, (S, S)).astype(np.uint8)


def _periodic_texture(name: str, n: int) -> np.ndarray:
    """Deterministic texture on an (n, n) grid of absolute coordinates I (rows), J (columns)."""
    I = np.arange(n, dtype=np.int64)[:, None]
    J = np.arange(n, dtype=np.int64)[None, :]
    s, lw, slw = TEXTURE_PERIOD, 3, 2
    y, x = I % s, J % s
    if name == "solid":
        m = np.ones((n, n), dtype=bool)
    elif name == "stripes":
        m = y < lw
    elif name == "grid":
        m = (y < lw) | (x < lw)
    elif name == "hexgrid":
        k = np.floor(1.73 * I).astype(np.int64)
        m = ((J + k) % s < slw) | ((J - k) % s < slw) | (y < slw)
    elif name == "dots":
        m = (x - 5) ** 2 + (y - 5) ** 2 < 16
    elif name == "triangles":
        m = y // 2 - np.abs(x - 5) > 0
    elif name == "zigzags":
        xf = np.where((I // s) % 2 == 1, s - 1 - x, x)
        m = (y // 2 < xf) & (xf < 5 + y // 2)
    elif name == "pluses":
        odd = (I // s) % 2 == 1
        xo = (x < 1.5) | (s - x < 1.5) | ((np.abs(y - 5) < 1.5) & (np.abs(x - 5) > 1.5))
        xe = (np.abs(x - 5) < 1.5) | (np.abs(y - 5) < 1.5)
        m = np.where(odd, xo, xe)
    else:
        raise ValueError(f"name: {name!r} is not a periodic texture")
    return np.broadcast_to(m, (n, n)).astype(np.uint8)


def rain_from_starts(starts: np.ndarray, length: int = 7) -> np.ndarray:
    """Vertical segments of `length` rows starting at every True of `starts`, clipped at the bottom edge.

    out[i, j] = any(starts[i-length+1 .. i, j]): a sliding window sum along rows via one cumulative sum.
    """
    c = np.cumsum(starts, axis=0, dtype=np.int32)
    window = c.copy()
    window[length:] -= c[:-length]
    return (window > 0).astype(np.uint8)


class _TextureBank:
    """Periodic textures precomputed once on an (n+period)^2 grid; an offset (o_x, o_y) is then a slice."""

    def __init__(self, n: int):
        self.n = n
        self._base = {t: _periodic_texture(t, n + TEXTURE_PERIOD) for t in TEXTURES if t not in ("noise", "rain")}

    def draw(self, name: str, rng: np.random.Generator, o_x: int, o_y: int) -> np.ndarray:
        if name in ("noise", "rain"):
            return self.random_texture(name, rng, self.n)
        return self._base[name][o_y:o_y + self.n, o_x:o_x + self.n]

    @staticmethod
    def random_texture(name: str, rng: np.random.Generator, n: int) -> np.ndarray:
        if name == "noise":
            return rng.integers(0, 2, size=(n, n), dtype=np.uint8)
        rng.integers(0, 10)  # the reference draws one unused integer first; kept so the stream has its shape
        return rain_from_starts(rng.random((n, n)) < 0.05)


def texture_pattern(name: str, rng: np.random.Generator, n: int = 448, o_x: int = 0, o_y: int = 0) -> np.ndarray:
    """Binary (n, n) uint8 texture with offsets (the reference table); unrotated."""
    if name not in TEXTURES:
        raise ValueError(f"name: unknown texture {name!r}; valid: {', '.join(TEXTURES)}")
    if name in ("noise", "rain"):
        return _TextureBank.random_texture(name, rng, n)
    return _periodic_texture(name, n + TEXTURE_PERIOD)[o_y:o_y + n, o_x:o_x + n].copy()


def rotate_centre_crop(texture: np.ndarray, angle: float, crop: int) -> np.ndarray:
    """Equals ``scipy.ndimage.rotate(texture, angle, order=0, reshape=False)`` cropped to its centre crop x crop.

    Only the crop is sampled (the same affine map scipy builds, shifted by the crop origin): 4x less work at 448.
    """
    n = texture.shape[0]
    start = (n - crop) // 2
    c, s = special.cosdg(angle), special.sindg(angle)
    rot = np.array([[c, s], [-s, c]])
    centre = np.array([(n - 1) / 2, (n - 1) / 2])
    offset = centre - rot @ centre + rot @ np.array([start, start], dtype=np.float64)
    return ndimage.affine_transform(texture, rot, offset, output_shape=(crop, crop), order=0, mode="constant",
                                    cval=0, prefilter=False)


class Renderer:
    """Renders single images; holds the templates and periodic textures so a whole set costs one setup."""

    def __init__(self, size: int = DEFAULT_SIZE):
        if not isinstance(size, (int, np.integer)) or size < 32:
            raise ValueError(f"size: must be an integer >= 32, got {size!r}")
        self.size = int(size)
        # The reference's geometry at 224: 128-px templates, 448-px texture canvas, centre crop [112:336].
        self.template_size = int(round(self.size * 128 / 224))
        self.texture_size = 2 * self.size
        self.templates = {s: shape_template(s, self.template_size) for s in SHAPES}
        self.textures = _TextureBank(self.texture_size)

    def masks(self, shape: int, texture: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(shape mask, texture mask) on the size x size canvas, both binary uint8; RNG calls in the reference's order."""
        size = self.size
        angle = int(rng.integers(-45, 45))
        # uint8 in, uint8 out: scipy rounds the bilinear result, i.e. thresholds at 0.5, so the mask stays binary.
        rotated = ndimage.rotate(self.templates[SHAPES[shape]], angle, order=1, reshape=True)
        rh, rw = rotated.shape
        r0 = int(rng.integers(0, size - rh))
        c0 = int(rng.integers(0, size - rw))
        shape_mask = np.zeros((size, size), dtype=np.uint8)
        shape_mask[r0:r0 + rh, c0:c0 + rw] = rotated
        o_x = int(rng.integers(0, TEXTURE_PERIOD))
        o_y = int(rng.integers(0, TEXTURE_PERIOD))
        tex = self.textures.draw(TEXTURES[texture], rng, o_x, o_y)
        t_angle = int(rng.integers(-45, 45))
        texture_mask = rotate_centre_crop(tex, t_angle, size)
        return shape_mask, texture_mask

    def render(self, shape: int, texture: int, colour: int, rng: np.random.Generator) -> np.ndarray:
        shape_mask, texture_mask = self.masks(shape, texture, rng)
        m = (shape_mask & texture_mask).astype(bool)
        return np.where(m[..., None], COLOUR_U8[colour], BACKGROUND_U8)


def render_image(shape: str | int, texture: str | int, colour: str | int, rng: np.random.Generator,
                 size: int = DEFAULT_SIZE) -> np.ndarray:
    """One (size, size, 3) uint8 image; attributes by name or id. For many images, reuse a ``Renderer``."""
    return Renderer(size).render(_attr_id(shape, SHAPES, "shape"), _attr_id(texture, TEXTURES, "texture"),
                                 _attr_id(colour, COLOURS, "colour"), rng)


def _attr_id(value, names, what) -> int:
    if isinstance(value, str):
        if value not in names:
            raise ValueError(f"{what}: unknown {what} {value!r}; valid: {', '.join(names)}")
        return names.index(value)
    if not 0 <= int(value) < len(names):
        raise ValueError(f"{what}: id {value} out of range [0, {len(names)})")
    return int(value)
