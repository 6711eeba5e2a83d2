"""Batch augmentations that run on the training device.

Images arrive as uint8 batches straight from the loader, (B, H, W, 3) or (B, 3, H, W); the whole batch is
augmented at once with kornia, each sample drawing its own parameters. The sequence augmentations (`noise`, `drop`)
act on (B, T, ...) tensors with a per-sample coin, replacing the reference's per-sample numpy work in loader workers.
"""

from __future__ import annotations

import torch
from torch import nn

import kornia.augmentation as K

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)   # the statistics CLIP was trained with (data.image_norm=clip)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def to_float_nchw(x: torch.Tensor) -> torch.Tensor:
    """uint8 (B,H,W,3) or (B,3,H,W) -> float32 (B,3,H,W) in [0, 1]; float input is taken to be in [0, 1]."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f"x: expected a 4-D image batch tensor, got {getattr(x, 'shape', type(x))}")
    if x.shape[1] != 3:
        if x.shape[-1] != 3:
            raise ValueError(f"x: expected (B,H,W,3) or (B,3,H,W), got {tuple(x.shape)}")
        x = x.permute(0, 3, 1, 2)
    if x.dtype == torch.uint8:
        return x.float().div_(255.0).contiguous()
    if not x.is_floating_point():
        raise ValueError(f"x: expected uint8 or floating point, got {x.dtype}")
    return x.float().contiguous()


def normalize(x: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def blur_kernel_size(size: int) -> int:
    """Odd kernel of about 10 % of the image side (SimCLR's choice; 23 at 224), at least 3."""
    k = int(0.1 * size)
    return max(3, k + 1 if k % 2 == 0 else k)


GRAY_WEIGHTS = (0.299, 0.587, 0.114)


def _gray(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(GRAY_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def rgb_to_hsv(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(B,3,H,W) RGB in [0,1] -> HSV with hue in turns [0,1) (colorsys / torchvision convention)."""
    r, g, b = x.unbind(1)
    maxc, argmax = x.max(1)
    minc = x.min(1).values
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp_min(eps), torch.zeros_like(maxc))
    # colorsys: h = bc - gc | 2 + rc - bc | 4 + gc - rc by the max channel, with rc = (max - r) / delta etc.;
    # bc - gc = (g - b) / delta, so one numerator per pixel and one division do (a third of the memory passes)
    num = torch.where(argmax == 0, g - b, torch.where(argmax == 1, b - r, r - g))
    h = num / delta.clamp_min(eps) + 2.0 * argmax.to(x.dtype)
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    return torch.stack([h, s, maxc], 1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """Inverse of `rgb_to_hsv`, in closed form: channel n is v - v·s·clamp(min(k, 4-k), 0, 1), k = (n + 6h) mod 6."""
    h, s, v = hsv[:, 0:1], hsv[:, 1:2], hsv[:, 2:3]
    n = torch.tensor([5.0, 3.0, 1.0], dtype=hsv.dtype, device=hsv.device).view(1, 3, 1, 1)
    k = (n + 6.0 * h) % 6.0
    return v - v * s * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)


class FastColorJitter(nn.Module):
    """torchvision-semantics ColorJitter on whole batches, each sample with its own factors and its own coin:
    multiplicative brightness, contrast against the mean grey level, saturation against the grey image, hue shift
    in HSV (turns), in a random order drawn per call. kornia's ColorJitter computes the same operations but its
    HSV round trip dominated the CPU training step (0.34 s of a 0.5 s augmentation per 64 images at 128 px,
    measured); this closed-form version is several times faster and runs on any device."""

    def __init__(self, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, p=0.8, select_all=None):
        super().__init__()
        self.b, self.c, self.s, self.h, self.p = brightness, contrast, saturation, hue, p
        self.select_all = select_all     # None: select on accelerators, index on a CPU (tests force either)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, dev = x.shape[0], x.device
        apply = torch.rand(B, device=dev) < self.p
        on_cpu = dev.type == "cpu" if self.select_all is None else not self.select_all
        if on_cpu:    # jitter only the chosen samples; elsewhere all of them and select (no host sync)
            idx = apply.nonzero().flatten()
            if idx.numel() == 0:
                return x
            y = x[idx]
        else:
            y = x
        n = y.shape[0]

        def factor(spread):
            return (1.0 + (torch.rand(n, device=dev) * 2 - 1) * spread).view(n, 1, 1, 1).to(y.dtype)

        for op in torch.randperm(4).tolist():
            if op == 0 and self.b:
                y = (y * factor(self.b)).clamp_(0, 1)
            elif op == 1 and self.c:
                f = factor(self.c)
                w = torch.tensor(GRAY_WEIGHTS, dtype=y.dtype, device=dev)
                m = (y.mean((2, 3)) * w).sum(1).view(n, 1, 1, 1)     # mean grey level = luma of channel means
                y = torch.lerp(m.expand_as(y), y, f).clamp_(0, 1)      # f·y + (1 - f)·m
            elif op == 2 and self.s:
                f = factor(self.s)
                y = torch.lerp(_gray(y).expand_as(y), y, f).clamp_(0, 1)
            elif op == 3 and self.h:
                hsv = rgb_to_hsv(y)
                shift = ((torch.rand(n, device=dev) * 2 - 1) * self.h).view(n, 1, 1)
                hsv = torch.cat([((hsv[:, 0] + shift) % 1.0).unsqueeze(1), hsv[:, 1:]], 1)
                y = hsv_to_rgb(hsv)
        if not on_cpu:
            return torch.where(apply.view(B, 1, 1, 1), y, x)
        out = x.clone()
        out[idx] = y
        return out


def _uniform(n: int, lo: float, hi: float, device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, device=device)


class FastRandomResizedCropFlip(nn.Module):
    """RandomResizedCrop (torchvision's box sampling: 10 tries of area ~ U(scale)·H·W and log-ratio ~
    U(log 3/4, log 4/3), first box that fits, else the centre fallback) followed by a horizontal flip with p = 0.5,
    as one batched ``grid_sample`` with a per-sample affine grid: the flip is a sign in the grid, so it costs nothing.

    Resampling is bilinear at pixel centres (``align_corners=False``), without antialiasing, as kornia's and
    torchvision's tensor crops; pixels just outside a box may feed its edge rows, where a slice-then-resize clamps.
    Everything stays on the batch's device and nothing is read back to the host (no synchronisation on a GPU).
    """

    tries = 10

    def __init__(self, size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), flip_p: float = 0.5):
        super().__init__()
        if not (0 < scale[0] <= scale[1] <= 1):
            raise ValueError(f"scale: must satisfy 0 < min <= max <= 1, got {scale}")
        if not (0 < ratio[0] <= ratio[1]):
            raise ValueError(f"ratio: must satisfy 0 < min <= max, got {ratio}")
        self.size, self.scale, self.ratio, self.flip_p = int(size), tuple(scale), tuple(ratio), float(flip_p)

    def boxes(self, B: int, H: int, W: int, device) -> torch.Tensor:
        """(B, 4) float boxes (top, left, height, width) in pixels, integer-valued."""
        import math

        n = B * self.tries
        area = _uniform(n, *self.scale, device) * (H * W)
        logr = _uniform(n, math.log(self.ratio[0]), math.log(self.ratio[1]), device)
        r = torch.exp(logr)
        w = torch.round(torch.sqrt(area * r)).view(B, self.tries)
        h = torch.round(torch.sqrt(area / r)).view(B, self.tries)
        ok = (w > 0) & (w <= W) & (h > 0) & (h <= H)
        first = torch.argmax(ok.to(torch.uint8), 1, keepdim=True)       # first fitting try (0 when none fits)
        any_ok = ok.any(1)
        w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
        in_ratio = W / H   # torchvision's fallback: the whole image, clamped to the ratio range, centred
        if in_ratio < self.ratio[0]:
            fw, fh = W, round(W / self.ratio[0])
        elif in_ratio > self.ratio[1]:
            fw, fh = round(H * self.ratio[1]), H
        else:
            fw, fh = W, H
        w = torch.where(any_ok, w, torch.full_like(w, fw))
        h = torch.where(any_ok, h, torch.full_like(h, fh))
        top = torch.where(any_ok, torch.floor(torch.rand(B, device=device) * (H - h + 1)),
                          torch.full_like(h, (H - fh) // 2))
        left = torch.where(any_ok, torch.floor(torch.rand(B, device=device) * (W - w + 1)),
                           torch.full_like(w, (W - fw) // 2))
        return torch.stack([top, left, h, w], 1)

    def resample(self, x: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        """Crop `boxes` (B, 4: top, left, h, w) of x (B, C, H, W), resize to size x size, mirror where `flip`."""
        B, _, H, W = x.shape
        top, left, h, w = boxes.to(x.dtype).unbind(1)
        sx = w / W * torch.where(flip, -1.0, 1.0).to(x.dtype)
        theta = torch.zeros(B, 2, 3, dtype=x.dtype, device=x.device)
        theta[:, 0, 0] = sx
        theta[:, 0, 2] = (2 * left + w) / W - 1
        theta[:, 1, 1] = h / H
        theta[:, 1, 2] = (2 * top + h) / H - 1
        grid = torch.nn.functional.affine_grid(theta, [B, x.shape[1], self.size, self.size], align_corners=False)
        return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        flip = torch.rand(B, device=x.device) < self.flip_p
        return self.resample(x, self.boxes(B, H, W, x.device), flip)


def gaussian_kernels(sigma: torch.Tensor, k: int) -> torch.Tensor:
    """(n,) sigmas -> (n, k) normalised 1-D Gaussian kernels centred on k // 2."""
    t = torch.arange(k, dtype=sigma.dtype, device=sigma.device) - (k // 2)
    g = torch.exp(-(t.view(1, -1) ** 2) / (2 * sigma.view(-1, 1) ** 2))
    return g / g.sum(1, keepdim=True)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, k: int) -> torch.Tensor:
    """Separable Gaussian blur of x (B, C, H, W) with one sigma per sample, reflect padding (kornia's default),
    as two depthwise convolutions over the whole batch."""
    B, C, H, W = x.shape
    g = gaussian_kernels(sigma.to(x.dtype), k).repeat_interleave(C, 0)        # (B*C, k)
    y = x.reshape(1, B * C, H, W)
    p = k // 2
    y = torch.nn.functional.pad(y, (p, p, 0, 0), mode="reflect")
    y = torch.nn.functional.conv2d(y, g.view(B * C, 1, 1, k), groups=B * C)
    y = torch.nn.functional.pad(y, (0, 0, p, p), mode="reflect")
    y = torch.nn.functional.conv2d(y, g.view(B * C, 1, k, 1), groups=B * C)
    return y.view(B, C, H, W)


class FastGaussianBlur(nn.Module):
    """RandomGaussianBlur(k, σ ~ U(sigma), p): each sample its own σ and coin. On a CPU only the chosen samples
    are blurred; on an accelerator the whole batch is, and a select keeps the unchosen ones (no host sync)."""

    def __init__(self, kernel_size: int, sigma=(0.1, 2.0), p: float = 0.5, select_all=None):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size: must be a positive odd int, got {kernel_size}")
        self.k, self.sigma, self.p = int(kernel_size), tuple(sigma), float(p)
        self.select_all = select_all     # None: select on accelerators, index on a CPU (tests force either)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, dev = x.shape[0], x.device
        coin = torch.rand(B, device=dev) < self.p
        sigma = _uniform(B, *self.sigma, dev)
        if self.k // 2 >= min(x.shape[-2:]):
            raise ValueError(f"kernel_size {self.k} too large for {tuple(x.shape[-2:])} images")
        if (dev.type == "cpu") if self.select_all is None else not self.select_all:
            idx = coin.nonzero().flatten()
            if idx.numel() == 0:
                return x
            out = x.clone()
            out[idx] = gaussian_blur(x[idx], sigma[idx], self.k)
            return out
        return torch.where(coin.view(B, 1, 1, 1), gaussian_blur(x, sigma, self.k), x)


class FastGrayscale(nn.Module):
    """RandomGrayscale(p): luma (0.299, 0.587, 0.114) copied to the three channels on a per-sample coin."""

    def __init__(self, p: float = 0.2):
        super().__init__()
        self.p = float(p)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        coin = (torch.rand(x.shape[0], device=x.device) < self.p).view(-1, 1, 1, 1)
        return torch.where(coin, _gray(x).expand_as(x), x)


class ImageSSLAugment(nn.Module):
    """SimCLR-style view: RandomResizedCrop, ColorJitter(0.4,0.4,0.4,0.1; p=0.8), RandomGrayscale(0.2),
    GaussianBlur(σ∈[0.1,2]; p=0.5), HorizontalFlip, ImageNet Normalize. Output float32 (B, 3, size, size).

    ``blur_sigma`` is the blur's σ range in pixels. SimCLR's (0.1, 2) is meant for 224 px images; on smaller
    images the same σ erases proportionally more detail (Trifeatures' textures have a 10 px period at 224 px),
    so low-resolution presets scale it with the image side.
    """

    IMPLS = ("fast", "kornia")

    def __init__(self, size: int, scale: tuple[float, float] = (0.08, 1.0), impl: str = "fast",
                 blur_sigma: tuple[float, float] = (0.1, 2.0)):
        super().__init__()
        if int(size) < 8:
            raise ValueError(f"size: must be >= 8, got {size}")
        if not (0 < scale[0] <= scale[1] <= 1):
            raise ValueError(f"scale: must satisfy 0 < min <= max <= 1, got {scale}")
        if not (len(blur_sigma) == 2 and 0 < blur_sigma[0] <= blur_sigma[1]):
            raise ValueError(f"blur_sigma: must be (min, max) with 0 < min <= max, got {blur_sigma}")
        if impl not in self.IMPLS:
            raise ValueError(f"impl: must be one of {', '.join(self.IMPLS)}, got {impl!r}")
        self.size, self.impl = int(size), impl
        k = blur_kernel_size(self.size)
        if impl == "fast":
            # same distribution of views; crop and flip are one grid_sample, nothing synchronises with the host.
            # Flipping before instead of after jitter/blur commutes with both, so the views are the same.
            self.ops = nn.Sequential(
                FastRandomResizedCropFlip(self.size, scale=tuple(scale)),
                FastColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8),
                FastGrayscale(p=0.2),
                FastGaussianBlur(k, sigma=tuple(blur_sigma), p=0.5),
            )
        else:
            self.ops = nn.Sequential(
                K.RandomResizedCrop((self.size, self.size), scale=tuple(scale)),
                FastColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8),
                K.RandomGrayscale(p=0.2),
                K.RandomGaussianBlur(k, sigma=tuple(blur_sigma), p=0.5),
                K.RandomHorizontalFlip(),
            )

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return normalize(self.ops(to_float_nchw(x)))


class ImageProbeTransform(nn.Module):
    """Un-augmented input: to float, resized to `size` if needed, ImageNet Normalize.

    ``probe_random_crop=True`` reproduces the reference's probe transform, RandomResizedCrop(size, scale=(0.5, 1))
    [ODDITY: makes feature extraction stochastic]; the default is deterministic.
    """

    def __init__(self, size: int, probe_random_crop: bool = False):
        super().__init__()
        if int(size) < 8:
            raise ValueError(f"size: must be >= 8, got {size}")
        self.size = int(size)
        self.probe_random_crop = bool(probe_random_crop)
        self.crop = (K.RandomResizedCrop((self.size, self.size), scale=(0.5, 1.0))
                     if self.probe_random_crop else None)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = to_float_nchw(x)
        if self.crop is not None:
            x = self.crop(x)
        elif x.shape[-2:] != (self.size, self.size):
            x = torch.nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True,
                                                align_corners=False)
        return normalize(x)


def _coin(batch: int, p: float, device, generator) -> torch.Tensor:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p: must be in [0, 1], got {p}")
    return torch.rand(batch, device=device, generator=generator) < p


def noise(x: torch.Tensor, std: float = 0.1, p: float = 0.5, coin: torch.Tensor | None = None,
          generator: torch.Generator | None = None) -> torch.Tensor:
    """x + N(0, std²) element-wise on the samples whose coin comes up (probability p each); x is (B, ...).

    ``coin`` (bool, (B,)) overrides the draw, so a joint pipeline can share one coin across modalities.
    """
    if std < 0:
        raise ValueError(f"std: must be >= 0, got {std}")
    if not x.is_floating_point():
        raise ValueError(f"x: noise needs a floating-point tensor, got {x.dtype}")
    b = x.shape[0]
    c = _coin(b, p, x.device, generator) if coin is None else coin.to(device=x.device, dtype=torch.bool)
    eps = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator) * std
    return x + eps * c.view(b, *([1] * (x.ndim - 1))).to(x.dtype)


def drop(x: torch.Tensor, max_frac: float = 0.8, p: float = 0.5, coin: torch.Tensor | None = None,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero round(f·T) randomly chosen rows (axis 1) of each sample, f ~ U(0, max_frac), on the samples whose coin
    comes up; x is (B, T, ...). Each call (i.e. each modality) draws its own f and rows, as the reference's `drop`.
    """
    if not 0.0 <= max_frac <= 1.0:
        raise ValueError(f"max_frac: must be in [0, 1], got {max_frac}")
    if x.ndim < 2:
        raise ValueError(f"x: expected (B, T, ...), got {tuple(x.shape)}")
    b, t = x.shape[:2]
    c = _coin(b, p, x.device, generator) if coin is None else coin.to(device=x.device, dtype=torch.bool)
    f = torch.rand(b, device=x.device, generator=generator) * max_frac
    k = torch.round(f * t).long() * c.long()
    # Rows without replacement: the k smallest of T uniform scores are a uniform random k-subset.
    ranks = torch.rand(b, t, device=x.device, generator=generator).argsort(dim=1).argsort(dim=1)
    dropped = ranks < k[:, None]
    return torch.where(dropped.view(b, t, *([1] * (x.ndim - 2))), torch.zeros((), dtype=x.dtype, device=x.device),
                       x)
