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
            K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8),
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
