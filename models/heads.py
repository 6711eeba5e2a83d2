"""Projection head and a BatchNorm that normalises several stacked batches as if one at a time.

The reference calls the head once per (B, E) tensor (each subset, each masked view), so in training every call
normalises with the statistics of its own B rows. Stacking G such tensors into one (G*B, E) call would change
those statistics; `grouped_batch_norm` keeps them per group and updates the running averages exactly as G
successive calls would, so the head runs as one matmul per layer instead of G small ones.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


_DECAY: dict = {}


def _decay_weights(m: float, groups: int, dtype, device) -> torch.Tensor:
    """(groups, 1) weights m(1-m)^(groups-1-g) of sequential running-stat updates, made once per device: a fresh
    host-to-device copy every step would synchronise an accelerator."""
    key = (float(m), int(groups), dtype, str(device))
    t = _DECAY.get(key)
    if t is None:
        if len(_DECAY) > 256:
            _DECAY.clear()
        with torch.inference_mode(False):   # usable later by autograd even if first made during inference
            t = _DECAY[key] = torch.tensor([m * (1.0 - m) ** (groups - 1 - g) for g in range(groups)],
                                           dtype=torch.float64, device=device).to(dtype)[:, None]
    return t

def grouped_batch_norm(bn: nn.BatchNorm1d, x: torch.Tensor, groups: int) -> torch.Tensor:
    """`torch.cat([bn(c) for c in x.chunk(groups)])`, in one pass when possible.

    The running-statistics update after G successive calls with momentum m is
    r_G = (1-m)^G r_0 + sum_g m (1-m)^(G-g) s_g, applied here in closed form.
    """
    if groups == 1 or not bn.training:
        return bn(x)
    if x.shape[0] % groups:
        raise ValueError(f"x has {x.shape[0]} rows, not a multiple of groups={groups}")
    if isinstance(bn, nn.SyncBatchNorm) or bn.momentum is None or not bn.track_running_stats:
        return torch.cat([bn(c) for c in x.chunk(groups)])
    n = x.shape[0] // groups
    if n < 2:
        raise ValueError("BatchNorm in training mode needs at least 2 rows per group")
    # Low-precision activations (autocast) are normalised in float32, as the native kernel does.
    low = x.dtype in (torch.float16, torch.bfloat16)
    xg = x.reshape(groups, n, x.shape[1])
    xg = xg.float() if low else xg
    var, mean = torch.var_mean(xg, dim=1, unbiased=False, keepdim=True)
    y = (xg - mean) * torch.rsqrt(var + bn.eps)
    if bn.affine:
        y = y * bn.weight.to(y.dtype) + bn.bias.to(y.dtype)
    with torch.no_grad():
        m = bn.momentum
        stats_dtype = bn.running_mean.dtype
        decay = _decay_weights(m, groups, stats_dtype, x.device)
        mean_g = mean.squeeze(1).to(stats_dtype)
        var_g = var.squeeze(1).to(stats_dtype) * (n / (n - 1))
        keep = (1.0 - m) ** groups
        bn.running_mean.mul_(keep).add_((decay * mean_g).sum(0))
        bn.running_var.mul_(keep).add_((decay * var_g).sum(0))
        bn.num_batches_tracked.add_(groups)
    return y.reshape(x.shape).to(x.dtype)


class ProjectionHead(nn.Module):
    """Linear(in, hidden) -> BN -> ReLU -> Linear(hidden, hidden) -> BN -> ReLU -> Linear(hidden, out).

    Layer names follow the reference (`layer1`, `bn1`, ...) so the BN parameters are excluded from weight decay
    by name as well as by shape. `forward(x, groups=G)` treats x as G stacked batches (see module docstring).
    """

    def __init__(self, in_dim: int, hidden_dim: int = 512, out_dim: int = 256):
        super().__init__()
        self.net = nn.Sequential(OrderedDict([
            ("layer1", nn.Linear(in_dim, hidden_dim)),
            ("bn1", nn.BatchNorm1d(hidden_dim)),
            ("relu1", nn.ReLU(inplace=True)),
            ("layer2", nn.Linear(hidden_dim, hidden_dim)),
            ("bn2", nn.BatchNorm1d(hidden_dim)),
            ("relu2", nn.ReLU(inplace=True)),
            ("layer3", nn.Linear(hidden_dim, out_dim)),
        ]))

    def forward(self, x: torch.Tensor, groups: int = 1) -> torch.Tensor:
        n = self.net
        x = F.relu(grouped_batch_norm(n.bn1, n.layer1(x), groups))
        x = F.relu(grouped_batch_norm(n.bn2, n.layer2(x), groups))
        return n.layer3(x)
