"""Batch augmentations that run on the training device (SPEC §3.0, §3.1).

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
    d = delta.clamp_min(eps)
    rc, gc, bc = (maxc - r) / d, (maxc - g) / d, (maxc - b) / d
    h = torch.where(argmax == 0, bc - gc, torch.where(argmax == 1, 2.0 + rc - bc, 4.0 + gc - rc))
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

    def __init__(self, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, p=0.8):
        super().__init__()
        self.b, self.c, self.s, self.h, self.p = brightness, contrast, saturation, hue, p

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, dev = x.shape[0], x.device
        apply = torch.rand(B, device=dev) < self.p
        if not bool(apply.any()):
            return x
        y = x[apply]
        n = y.shape[0]

        def factor(spread):
            return (1.0 + (torch.rand(n, device=dev) * 2 - 1) * spread).view(n, 1, 1, 1)

        for op in torch.randperm(4).tolist():
            if op == 0 and self.b:
                y = (y * factor(self.b)).clamp(0, 1)
            elif op == 1 and self.c:
                f = factor(self.c)
                m = _gray(y).mean((1, 2, 3), keepdim=True)
                y = (f * y + (1 - f) * m).clamp(0, 1)
            elif op == 2 and self.s:
                f = factor(self.s)
                y = (f * y + (1 - f) * _gray(y)).clamp(0, 1)
            elif op == 3 and self.h:
                hsv = rgb_to_hsv(y)
                shift = ((torch.rand(n, device=dev) * 2 - 1) * self.h).view(n, 1, 1)
                hsv = torch.cat([((hsv[:, 0] + shift) % 1.0).unsqueeze(1), hsv[:, 1:]], 1)
                y = hsv_to_rgb(hsv)
        out = x.clone()
        out[apply] = y
        return out


class ImageSSLAugment(nn.Module):
    """SimCLR-style view: RandomResizedCrop, ColorJitter(0.4,0.4,0.4,0.1; p=0.8), RandomGrayscale(0.2),
    GaussianBlur(σ∈[0.1,2]; p=0.5), HorizontalFlip, ImageNet Normalize. Output float32 (B, 3, size, size)."""

    def __init__(self, size: int, scale: tuple[float, float] = (0.08, 1.0)):
        super().__init__()
        if int(size) < 8:
            raise ValueError(f"size: must be >= 8, got {size}")
        if not (0 < scale[0] <= scale[1] <= 1):
            raise ValueError(f"scale: must satisfy 0 < min <= max <= 1, got {scale}")
        self.size = int(size)
        self.ops = nn.Sequential(
            K.RandomResizedCrop((self.size, self.size), scale=tuple(scale)),
            FastColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8),
            K.RandomGrayscale(p=0.2),
            K.RandomGaussianBlur(blur_kernel_size(self.size), sigma=(0.1, 2.0), p=0.5),
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

    ``coin`` (bool, (B,)) overrides the draw, so a joint pipeline can share one coin across modalities (SPEC §3.0).
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
