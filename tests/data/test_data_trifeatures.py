"""Trifeatures generator: the pictures (geometry, colours, textures), the split, files and their integrity."""

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from infmask.data import trifeatures as T

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def raw32(tmp_path_factory):
    """The full 2400 + 200 set at 32 px (split, files and labels do not depend on the size)."""
    out = tmp_path_factory.mktemp("trifeatures") / "raw32"
    T.generate(out, seed=42, size=32, progress=False)
    return out

# ---------------------------------------------------------------------------------------------------------------
# Oracles: the reference tables written out pixel by pixel (slow and obvious, S = 128 / 10-px textures).


def shape_oracle(name, i, j):
    if name == "square":
        return True
    if name == "circle":
        return (i + 0.5 - 64) ** 2 + (j + 0.5 - 64) ** 2 < 64 ** 2
    if name == "triangle":
        return abs(j - 64) - (i // 2) < 1
    if name == "plus":
        return 43 <= j <= 85 or 43 <= i <= 85
    if name == "tee":
        return 43 <= j <= 85 or i < 42
    if name == "rhombus":
        return 0 < j - 64 + (i // 2) < 64
    if name == "pentagon":
        if i < 51:
            return abs(j - 64) - 1.25 * i < 1
        x_off = (i - 51) // 3.1
        return x_off < j < 128 - x_off
    if name == "star":
        on = False
        if i < 51:
            on = abs(j - 64) - (i // 4) < 1
        elif i < 76:
            x_off = 2.4 * (i - 51)
            on = x_off < j < 128 - x_off
        if i >= 70:
            a = 42.24 - 0.43 * (i - 70)
            b = 79.36 - 1.05 * (i - 70)
            on = on or (a < j < b) or (a < 128 - j < b)
        return on
    if name == "fivesquare":
        mid_r, mid_c = 42 <= i < 85, 42 <= j < 85
        return (not mid_r and not mid_c) or (mid_r and mid_c)
    if name == "trapezoid":
        x_off = i // 3.1
        return x_off < j < 128 - x_off
    raise AssertionError(name)


def texture_oracle(name, I, J):
    y, x = I % 10, J % 10
    if name == "solid":
        return True
    if name == "stripes":
        return y < 3
    if name == "grid":
        return y < 3 or x < 3
    if name == "hexgrid":
        k = int(np.floor(1.73 * I))
        return (J + k) % 10 < 2 or (J - k) % 10 < 2 or y < 2
    if name == "dots":
        return (x - 5) ** 2 + (y - 5) ** 2 < 16
    if name == "triangles":
        return y // 2 - abs(x - 5) > 0
    if name == "zigzags":
        if (I // 10) % 2 == 1:
            x = 9 - x
        return y // 2 < x < 5 + y // 2
    if name == "pluses":
        if (I // 10) % 2 == 1:
            return x < 1.5 or 10 - x < 1.5 or (abs(y - 5) < 1.5 and abs(x - 5) > 1.5)
        return abs(x - 5) < 1.5 or abs(y - 5) < 1.5
    raise AssertionError(name)


# Expected template areas as fractions of 128², worked out by hand from the formulas.
EXPECTED_AREA = {
    "square": 1.0, "circle": np.pi / 4, "triangle": 0.5, "plus": (2 * 43 * 128 - 43 * 43) / 128 ** 2,
    "tee": (43 * 128 + 42 * 128 - 42 * 43) / 128 ** 2, "rhombus": 63 * 128 / 128 ** 2, "pentagon": 0.69,
    "star": 0.26, "fivesquare": (42 * 42 + 2 * 42 * 43 + 2 * 43 * 43) / 128 ** 2, "trapezoid": 0.68,
}


@pytest.mark.parametrize("name", T.SHAPES)
def test_shape_template_matches_the_spec_formula(name):
    got = T.shape_template(name, 128)
    want = np.array([[shape_oracle(name, i, j) for j in range(128)] for i in range(128)], dtype=np.uint8)
    assert got.dtype == np.uint8 and got.shape == (128, 128)
    assert np.array_equal(got, want)
    assert abs(got.mean() - EXPECTED_AREA[name]) < 0.01


def test_shape_areas_are_distinct_enough_to_tell_apart_except_the_known_twins():
    areas = {s: int(T.shape_template(s).sum()) for s in T.SHAPES}
    assert areas["tee"] == areas["fivesquare"]  # same area by construction; the outlines differ
    assert not np.array_equal(T.shape_template("tee"), T.shape_template("fivesquare"))
    assert areas["square"] == 128 ** 2 and areas["triangle"] == 8192


@pytest.mark.parametrize("name", [t for t in T.TEXTURES if t not in ("noise", "rain")])
def test_periodic_texture_matches_the_spec_formula_with_offsets(name):
    o_x, o_y, n = 3, 7, 40
    got = T.texture_pattern(name, np.random.default_rng(0), n=n, o_x=o_x, o_y=o_y)
    want = np.array([[texture_oracle(name, i + o_y, j + o_x) for j in range(n)] for i in range(n)], np.uint8)
    assert np.array_equal(got, want)


def test_rain_vectorised_equals_the_pixel_loop():
    rng = np.random.default_rng(3)
    starts = rng.random((60, 50)) < 0.05
    want = np.zeros((60, 50), np.uint8)
    for i in range(60):
        for j in range(50):
            if starts[i, j]:
                want[i:i + 7, j] = 1
    assert np.array_equal(T.rain_from_starts(starts), want)


def test_random_textures_have_the_right_statistics():
    rng = np.random.default_rng(0)
    noise = T.texture_pattern("noise", rng, n=448)
    assert set(np.unique(noise)) == {0, 1} and abs(noise.mean() - 0.5) < 0.01
    # neighbouring pixels independent
    assert abs((noise[:, 1:] == noise[:, :-1]).mean() - 0.5) < 0.01
    rain = T.texture_pattern("rain", rng, n=448)
    assert abs(rain.mean() - (1 - 0.95 ** 7)) < 0.02
    # vertical runs: every run of 1s in a column (not touching the top edge) is at least 7 long
    col = rain[50:400, :].T
    d = np.diff(np.pad(col, ((0, 0), (1, 1))).astype(int), axis=1)
    starts, ends = np.nonzero(d == 1), np.nonzero(d == -1)
    lengths = ends[1] - starts[1]
    interior = (starts[1] > 0) & (ends[1] < col.shape[1])
    assert lengths[interior].min() >= 7
    # horizontal neighbours nearly independent, vertical ones strongly dependent
    assert (rain[1:] == rain[:-1]).mean() > 0.9 > (rain[:, 1:] == rain[:, :-1]).mean()


def _texture_stats(m):
    """fill, equal-to-shift-10 (rows), equal-to-shift-10 (cols), equal-to-shift-1 (rows), same for cols."""
    m = m.astype(np.int8)
    return np.array([m.mean(), (m[10:] == m[:-10]).mean(), (m[:, 10:] == m[:, :-10]).mean(),
                     (m[1:] == m[:-1]).mean(), (m[:, 1:] == m[:, :-1]).mean(),
                     (m[20:] == m[:-20]).mean()])


def test_each_texture_has_distinct_pixel_statistics():
    rng = np.random.default_rng(1)
    stats = {t: _texture_stats(T.texture_pattern(t, rng, n=440)) for t in T.TEXTURES}  # whole tiles
    names = list(T.TEXTURES)
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            gap = np.abs(stats[names[a]] - stats[names[b]]).max()
            assert gap > 0.05, (names[a], names[b], stats[names[a]], stats[names[b]])
    assert stats["solid"][0] == 1.0
    assert abs(stats["stripes"][0] - 0.3) < 1e-9 and stats["stripes"][2] == 1.0  # constant along rows
    assert abs(stats["dots"][0] - 0.45) < 1e-9  # 45 of the 100 cells of a 10x10 tile
    assert stats["noise"][1] < 0.6 and stats["grid"][1] == 1.0  # periodic vs not


@pytest.mark.parametrize("angle", [-45, -30, -1, 0, 17, 44])
def test_texture_rotation_equals_scipy_rotate_then_centre_crop(angle):
    tex = np.random.default_rng(angle + 100).integers(0, 2, (448, 448), dtype=np.uint8)
    want = ndimage.rotate(tex, angle, order=0, reshape=False)[112:336, 112:336]
    got = T.rotate_centre_crop(tex, angle, 224)
    # only exact .5 ties in nearest-neighbour sampling (at ±45°) may round the other way
    assert (got != want).mean() < 2e-3


# ---------------------------------------------------------------------------------------------------------------
# Real 224x224 renders


def _colour_u8(c):
    return tuple(int(v * 255) for v in c)


def test_rendered_224_images_have_exact_colours_and_background():
    rng = np.random.default_rng(5)
    r = T.Renderer(224)
    bg = _colour_u8((0.5, 0.5, 0.5))
    assert bg == (127, 127, 127)
    for k in range(12):
        s, t, c = rng.integers(0, 10, size=3)
        img = r.render(s, t, c, rng)
        assert img.shape == (224, 224, 3) and img.dtype == np.uint8
        colours = {tuple(p) for p in np.unique(img.reshape(-1, 3), axis=0)}
        assert colours <= {bg, _colour_u8(T.COLOUR_RGB[c])}
        assert _colour_u8(T.COLOUR_RGB[c]) in colours and bg in colours
    assert _colour_u8(T.COLOUR_RGB[T.COLOURS.index("ocean")]) == (25, 102, 127)
    assert _colour_u8(T.COLOUR_RGB[T.COLOURS.index("purple")]) == (76, 0, 127)


@pytest.mark.parametrize("shape", T.SHAPES)
def test_rendered_224_shape_area_in_expected_range(shape):
    rng = np.random.default_rng(T.SHAPES.index(shape))
    r = T.Renderer(224)
    for _ in range(3):
        img = r.render(T.SHAPES.index(shape), T.TEXTURES.index("solid"), T.COLOURS.index("red"), rng)
        area = (img != 127).any(-1).sum() / 128 ** 2
        # rotation (bilinear, rounded) keeps the area within a few per cent; the shape is never clipped
        assert abs(area - EXPECTED_AREA[shape]) < 0.03 * EXPECTED_AREA[shape] + 0.01, (shape, area)


def test_rendered_shape_is_inside_canvas_and_texture_shows_inside_it():
    rng = np.random.default_rng(11)
    r = T.Renderer(224)
    for t in T.TEXTURES:
        shape_mask, tex_mask = r.masks(T.SHAPES.index("square"), T.TEXTURES.index(t), rng)
        inside = tex_mask[shape_mask.astype(bool)].mean()
        if t == "solid":
            assert inside == 1.0
        else:
            assert 0.15 < inside < 0.8, (t, inside)
        # the pasted shape is the whole rotated template: nothing cut by the canvas edge
        assert shape_mask.sum() >= 0.97 * 128 ** 2


def test_render_image_accepts_names_and_refuses_unknown():
    img = T.render_image("star", "grid", "pink", np.random.default_rng(0), size=64)
    assert img.shape == (64, 64, 3)
    with pytest.raises(ValueError, match="shape"):
        T.render_image("hexagon", "grid", "pink", np.random.default_rng(0))
    with pytest.raises(ValueError, match="size"):
        T.Renderer(16)


# ---------------------------------------------------------------------------------------------------------------
# The generated set (small images: the split and files do not depend on the size)


def _images_sha(d):
    return [T.sha256_file(d / f) for f in ("images_train.npy", "images_test.npy")]


def test_generated_set_counts_split_and_labels(raw32):
    assert T.verify(raw32) == []
    man = T.read_manifest(raw32)
    assert man["params"]["seed"] == 42 and man["params"]["size"] == 32
    train = np.load(raw32 / "images_train.npy")
    test = np.load(raw32 / "images_test.npy")
    assert train.shape == (2400, 32, 32, 3) and test.shape == (200, 32, 32, 3)
    assert train.dtype == test.dtype == np.uint8
    rows = T.read_labels(raw32 / "labels.csv")  # raises unless names, ids and file names agree
    assert len(rows) == 2600
    for split, n in (("train", 2400), ("test", 200)):
        sel = sorted((r for r in rows if r["split"] == split), key=lambda r: r["index"])
        assert [r["index"] for r in sel] == list(range(n))
        names = [r["filename"] for r in sel]
        assert names == sorted(names), "each split is in sorted file-name order"
    trip = lambda r: (r["shape"], r["texture"], r["colour"])  # noqa: E731
    train_t = [trip(r) for r in rows if r["split"] == "train"]
    test_t = [trip(r) for r in rows if r["split"] == "test"]
    assert len(set(train_t)) == 800 and len(set(test_t)) == 200
    assert set(train_t) | set(test_t) == {tuple(a) for a in T.triplet_attributes()}  # every triplet in one split
    assert not set(train_t) & set(test_t)
    assert all(train_t.count(t) == 3 for t in set(train_t[:30]))
    assert {r["filename"][-6:] for r in rows if r["split"] == "train"} == {"_0.png", "_1.png", "_2.png"}
    # the pixels carry the labels: each image is its colour on grey
    for r in rows[::97]:
        img = (train if r["split"] == "train" else test)[r["index"]]
        assert {tuple(p) for p in np.unique(img.reshape(-1, 3), axis=0)} <= {
            (127, 127, 127), tuple(T.COLOUR_U8[r["colour"]])}


def test_generation_is_deterministic_and_a_new_seed_gives_another_valid_set(raw32, tmp_path):
    again = tmp_path / "again"
    T.generate(again, seed=42, size=32, progress=False)
    assert _images_sha(again) == _images_sha(raw32)
    assert (again / "labels.csv").read_bytes() == (raw32 / "labels.csv").read_bytes()
    other = tmp_path / "other"
    T.generate(other, seed=7, size=32, progress=False)
    assert T.verify(other) == [] and T.verify(other, expect={"seed": 7}) == []
    assert T.verify(other, expect={"seed": 42}) != []
    rows = T.read_labels(other / "labels.csv")
    test_t = {(r["shape"], r["texture"], r["colour"]) for r in rows if r["split"] == "test"}
    base_t = {(r["shape"], r["texture"], r["colour"]) for r in T.read_labels(raw32 / "labels.csv")
              if r["split"] == "test"}
    assert len(test_t) == 200 and test_t != base_t
    assert _images_sha(other) != _images_sha(raw32)


def test_verify_detects_missing_truncated_and_corrupt_files(raw32, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(raw32, d)
    assert T.verify(d) == []
    p = d / "images_test.npy"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    problems = T.verify(d)
    assert len(problems) == 1 and "sha256" in problems[0] and "images_test.npy" in problems[0]
    assert T.verify(d, deep=False) == []  # same size: only the hash sees it
    with open(d / "labels.csv", "r+b") as f:
        f.truncate(100)
    assert any("labels.csv" in q and "size" in q for q in T.verify(d))
    (d / "images_train.npy").unlink()
    assert any("images_train.npy" in q and "missing" in q for q in T.verify(d))
    (d / "manifest.json").write_text("{not json")
    assert "unreadable manifest" in T.verify(d)[0]
    (d / "manifest.json").unlink()
    assert "missing manifest" in T.verify(d)[0]
    assert "missing directory" in T.verify(tmp_path / "nothing")[0]


def test_generate_refuses_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="seed"):
        T.generate(tmp_path / "x", seed=-1, size=32, progress=False)
    with pytest.raises(ValueError, match="size"):
        T.generate(tmp_path / "x", seed=1, size=8, progress=False)
    assert not (tmp_path / "x").exists()


def _spawn_generation(out: Path, size: int) -> subprocess.Popen:
    code = ("import sys; from pathlib import Path; from infmask.data import trifeatures as T; "
            f"T.generate(Path({str(out)!r}), seed=3, size={size}, progress=False)")
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO)


def _kill_mid_generation(out: Path, size: int) -> None:
    proc = _spawn_generation(out, size)
    try:
        deadline = time.time() + 60
        while not list(out.parent.glob(f".{out.name}.partial-*")):
            assert proc.poll() is None, "generation ended before it could be killed"
            assert time.time() < deadline
            time.sleep(0.02)
        time.sleep(0.5)
        assert proc.poll() is None, "generation ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()


def test_a_killed_generation_leaves_nothing_that_looks_complete(tmp_path, raw32):
    out = tmp_path / "raw" / "trifeatures"
    out.parent.mkdir()
    _kill_mid_generation(out, size=224)
    assert not out.exists()
    assert T.verify(out) != []
    leftovers = list(out.parent.iterdir())
    assert leftovers and all(p.name.startswith(".") for p in leftovers)  # hidden build dirs only, no manifest
    assert not any((p / "manifest.json").exists() for p in leftovers)
    # a later run cleans up the dead build and completes
    T.generate(out, seed=3, size=32, progress=False)
    assert T.verify(out) == []
    assert [p.name for p in out.parent.iterdir()] == ["trifeatures"]
    # killed while replacing a complete set: the old set stays complete and valid
    _kill_mid_generation(out, size=224)
    assert T.verify(out, expect={"size": 32}) == []


def test_export_png_writes_readable_images_with_the_reference_names(raw32, tmp_path):
    import matplotlib.image as mpimg

    from helpers.trifeatures_png import export_png

    n = export_png(raw32, tmp_path / "png", limit=2)
    assert n == 4
    files = sorted((tmp_path / "png" / "train").iterdir())
    assert len(files) == 2
    rows = [r for r in T.read_labels(raw32 / "labels.csv") if r["split"] == "train" and r["index"] == 0]
    assert files[0].name == rows[0]["filename"]
    decoded = (mpimg.imread(files[0]) * 255).round().astype(np.uint8)
    assert np.array_equal(decoded[..., :3], np.load(raw32 / "images_train.npy")[0])


@pytest.mark.slow
def test_full_224_generation_is_fast_and_complete(tmp_path):
    t0 = time.perf_counter()
    man = T.generate(tmp_path / "raw", seed=42, size=224, progress=False)
    seconds = time.perf_counter() - t0
    assert seconds < 60, seconds
    assert man["params"]["n_train"] == 2400 and man["params"]["n_test"] == 200
    assert T.verify(tmp_path / "raw") == []
    imgs = np.load(tmp_path / "raw" / "images_train.npy", mmap_mode="r")
    assert imgs.shape == (2400, 224, 224, 3)
    t0 = time.perf_counter()
    T.preprocess(tmp_path / "raw", tmp_path / "proc", image_size=224, progress=False)
    assert time.perf_counter() - t0 < 60
    assert T.verify(tmp_path / "proc") == []


def test_render_size_renders_a_raw_set_of_that_size_on_demand(tmp_path, capsys):
    """data.render_size: the raw set is rendered at that size (textures keep their 10 px period there) when
    first needed, beside the 224 px set's folder; rendered at the training size, nothing is resized."""
    from infmask.config import build_config
    from infmask.data import trifeatures_stages as stages
    from infmask.data.registry import DATASETS
    from infmask.stages.data_stages import paths_for, settings_for
    from infmask.workspace import Workspace

    entry = DATASETS["trifeatures"]
    paths = paths_for(Workspace.open(tmp_path / "ws"), entry)
    cfg = build_config("trifeatures", "infmasking", "smoke",
                       overrides=["data.render_size=40", "data.image_size=40", "data.max_size=64"])
    out = stages.preprocess(entry, paths, settings_for(cfg, entry))
    raw = stages.raw_dir(paths, 42, 40)
    assert raw.name == "seed_42_px40" and T.read_manifest(raw)["params"]["size"] == 40
    assert not stages.raw_dir(paths, 42).exists()  # no 224 px set was rendered for it
    assert "render40" in out.name and T.load_processed(out, "train")["images"].shape[1:] == (40, 40, 3)
    resized = build_config("trifeatures", "infmasking", "smoke", overrides=["data.image_size=40", "data.max_size=64"])
    assert stages.processed_dir(paths, settings_for(resized, entry)) != out
    assert "rendered at 40 px" in capsys.readouterr().out
