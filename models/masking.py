"""Random masked views: how many tokens a view keeps (`keep_count`) and which (`random_keep_mask`).

Kept apart from the fusion transformer because the bench and the reference formulation sample masks on their own;
`infmask.models.fusion` re-exports both names.
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Optional, Sequence

import torch

ROUNDINGS = ("truncate", "round")


def check_mask_ratio(ratio: float) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio (mask ratio) must be in [0, 1), got {ratio!r}")
    return float(ratio)


def keep_count(length: int, ratio: float, rounding: str = "truncate") -> int:
    """Number of tokens a masked view keeps out of `length`.

    "truncate" is the reference: int(L * (1 - ratio)) in float64, so 1 - 0.8 = 0.19999999999999996 gives
    int(10 * 0.2) = 1 and a single token is always masked. "round" rounds the exact decimal product
    L * (1 - ratio) to the nearest integer, halves up (10 * 0.2 = 2; 1 * 0.5 -> 1).
    """
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise ValueError(f"length must be a non-negative int, got {length!r}")
    ratio = check_mask_ratio(ratio)
    if rounding == "truncate":
        k = int(length * (1 - ratio))
    elif rounding == "round":
        exact = length * (1 - Fraction(repr(ratio)))
        k = math.floor(exact + Fraction(1, 2))
    else:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    return max(0, min(length, k))


def random_keep_mask(views: int, batch: int, lengths: Sequence[int], ratio: float, rounding: str = "truncate",
                     generator: Optional[torch.Generator] = None,
                     device: Optional[torch.device] = None) -> torch.Tensor:
    """Bool (views, batch, sum(lengths)), True = keep. Each block of `lengths[m]` positions (one modality) keeps
    exactly keep_count(L_m) of them, chosen per view and per sample as the smallest of uniform noise."""
    if views < 1 or batch < 1:
        raise ValueError(f"views and batch must be >= 1, got views={views}, batch={batch}")
    blocks = []
    for length in lengths:
        k = keep_count(int(length), ratio, rounding)
        mask = torch.zeros(views, batch, int(length), dtype=torch.bool, device=device)
        if k > 0:
            noise = torch.rand(views, batch, int(length), generator=generator, device=device)
            mask.scatter_(-1, noise.argsort(dim=-1)[..., :k], True)
        blocks.append(mask)
    return torch.cat(blocks, dim=-1)
