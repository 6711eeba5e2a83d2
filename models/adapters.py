"""Input adapters: turn an encoder output into a sequence of `dim_tokens`-wide tokens.

Constructed as `ADAPTERS[name](dim_tokens=E, **adapter_kwargs)`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def sincos_2d(grid_size: int, dim: int) -> torch.Tensor:
    """MoCo-v3 2-D sin-cos table, (grid*grid, dim), tokens in row-major (row, col) order.

    Token (r, c) gets [sin(r w), cos(r w), sin(c w), cos(c w)] with w_k = 1 / 10000^(k/d), d = dim/4.
    Built in float32 like the reference.
    """
    if dim % 4:
        raise ValueError(f"dim_tokens must be divisible by 4 for the 2-D sin-cos embedding, got {dim}")
    if grid_size <= 0:
        raise ValueError(f"grid_size must be positive, got {grid_size}")
    d = dim // 4
    omega = 1.0 / (10000.0 ** (torch.arange(d, dtype=torch.float32) / d))
    coords = torch.arange(grid_size, dtype=torch.float32)
    rows = coords.repeat_interleave(grid_size)      # r for token r*grid + c
    cols = coords.repeat(grid_size)                 # c
    out_r, out_c = torch.outer(rows, omega), torch.outer(cols, omega)
    return torch.cat([out_r.sin(), out_r.cos(), out_c.sin(), out_c.cos()], dim=1)


class PatchedAdapter(nn.Module):
    """Feature map (B, C, H, W) -> (B, H*W, E): 1x1 conv C->E (with bias) plus a fixed 2-D sin-cos table.

    The table is a non-persistent buffer: never trained, never decayed, rebuilt identically at load time. It is
    built for `grid_size`; a different actual grid resizes it bicubically, as the reference does.
    """

    def __init__(self, num_channels: int, grid_size: int, dim_tokens: int):
        super().__init__()
        self.num_channels, self.grid_size, self.dim_tokens = num_channels, grid_size, dim_tokens
        self.proj = nn.Conv2d(num_channels, dim_tokens, kernel_size=1)
        self.register_buffer("pos_emb", sincos_2d(grid_size, dim_tokens), persistent=False)

    def _pos(self, h: int, w: int) -> torch.Tensor:
        if (h, w) == (self.grid_size, self.grid_size):
            return self.pos_emb
        g = self.grid_size
        table = self.pos_emb.t().reshape(1, self.dim_tokens, g, g)
        table = F.interpolate(table, size=(h, w), mode="bicubic", align_corners=False)
        return table.reshape(self.dim_tokens, h * w).t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.num_channels:
            raise ValueError(f"x must be (B, {self.num_channels}, H, W), got shape {tuple(x.shape)}")
        tokens = self.proj(x).flatten(2).transpose(1, 2)              # (B, H*W, E), row-major
        return tokens + self._pos(x.shape[2], x.shape[3]).to(tokens.dtype)


class FeaturesAdapter(nn.Module):
    """"Feature tokenizer": (B, F) -> (B, F, E), token i = x_i * W_i + b_i, W and b initialised N(0, 1).

    `weight` gets weight decay and `bias` does not (the reference goes by name).
    """

    def __init__(self, n_features: int, dim_tokens: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_features, dim_tokens))
        self.bias = nn.Parameter(torch.randn(n_features, dim_tokens))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.weight.shape[0]:
            raise ValueError(f"x must be (B, {self.weight.shape[0]}), got shape {tuple(x.shape)}")
        return x.unsqueeze(-1) * self.weight + self.bias


class SimpleFeaturesAdapter(nn.Module):
    """(B, E) -> (B, 1, E): one token, no parameters."""

    def __init__(self, dim_tokens: int):
        super().__init__()
        self.dim_tokens = dim_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim_tokens:
            raise ValueError(f"x must be (B, {self.dim_tokens}), got shape {tuple(x.shape)}")
        return x.unsqueeze(1)


class NoAdapter(nn.Module):
    """The encoder already returns (B, L, E) tokens."""

    def __init__(self, dim_tokens: int):
        super().__init__()
        self.dim_tokens = dim_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3 or x.shape[-1] != self.dim_tokens:
            raise ValueError(f"x must be (B, L, {self.dim_tokens}), got shape {tuple(x.shape)}")
        return x


ADAPTERS: dict[str, type[nn.Module]] = {
    "patched": PatchedAdapter,
    "features": FeaturesAdapter,
    "simple_features": SimpleFeaturesAdapter,
    "none": NoAdapter,
}


def build_adapter(name: str, dim_tokens: int, **kwargs) -> nn.Module:
    if name not in ADAPTERS:
        raise ValueError(f"adapter must be one of {sorted(ADAPTERS)}, got {name!r}")
    return ADAPTERS[name](dim_tokens=dim_tokens, **kwargs)
