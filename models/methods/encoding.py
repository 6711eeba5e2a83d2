"""Building blocks the methods share: encoders and the fusion encoder from `cfg["model"]`, pooling an encoder
output to one vector per sample, and running an encoder on several copies at once.

Baselines built on per-modality encoders (Cross, Cross+Self, CMC) pool encoder outputs to one vector per sample:
CNN maps (B, C, H, W) by global average pooling, token sequences (B, L, D) by the mean over non-padding tokens,
vectors as they are. The reference flattens instead; for AlexNet that is 9216 values per image, for padded
sequences a batch-dependent size, so pooling is the deliberate choice here.
"""
from __future__ import annotations

import torch
from torch import nn

from ..adapters import build_adapter
from ..encoders import build_encoder
from ..fusion import MultimodalEncoder, batchable_copies, has_batchnorm


def build_encoders(model: dict, weights_dir=None) -> list:
    """One encoder per entry of `model["modalities"]`; `weights_dir` (the config's data.weights_dir) is where
    encoders with pretrained weights look for them unless their encoder_kwargs say otherwise."""
    return [build_encoder(m["encoder"], channels_last=bool(model.get("channels_last", True)),
                          default_weights_dir=weights_dir, **(m.get("encoder_kwargs") or {}))
            for m in model["modalities"]]


def build_multimodal_encoder(model: dict, mask_token: bool = True, weights_dir=None) -> MultimodalEncoder:
    """Encoders + adapters + fusion transformer from `cfg["model"]` (defaults filled in)."""
    E = int(model["embed_dim"])
    adapters = [build_adapter(m.get("adapter", "none"), E, **(m.get("adapter_kwargs") or {}))
                for m in model["modalities"]]
    return MultimodalEncoder(build_encoders(model, weights_dir), adapters, E, n_layers=int(model["n_layers"]),
                             n_heads=int(model["n_heads"]), mask_ratio=float(model["mask_ratio"]),
                             num_mask=int(model["num_mask"]), keep_rounding=model["keep_rounding"],
                             mask_all_subsets=bool(model["mask_all_subsets"]),
                             fast_fusion=bool(model["fast_fusion"]), mask_padding=bool(model["mask_padding"]),
                             mask_token=mask_token)


def pool_features(out) -> torch.Tensor:
    """One vector per sample from an encoder output (see the module docstring)."""
    pad = None
    if isinstance(out, tuple):
        out, pad = out
    if out.ndim == 4:
        return out.mean(dim=(2, 3))
    if out.ndim == 3:
        if pad is None:
            return out.mean(dim=1)
        keep = (~pad.bool()).unsqueeze(-1).to(out.dtype)
        return (out * keep).sum(1) / keep.sum(1).clamp(min=1)
    if out.ndim == 2:
        return out
    return out.reshape(len(out), -1)


def encode_copies(encoder: nn.Module, xs: list) -> list:
    """encoder(x) for each x, in one call when that changes nothing (no BatchNorm, equal shapes)."""
    if batchable_copies(xs) and not has_batchnorm(encoder):
        out = encoder(torch.cat(xs))
        sizes = [len(x) for x in xs]
        if isinstance(out, tuple):
            return list(zip(out[0].split(sizes), out[1].split(sizes)))
        return list(out.split(sizes))
    return [encoder(x) for x in xs]


def encoder_dims(encoders: list, modalities: list) -> list:
    dims = []
    for i, e in enumerate(encoders):
        d = getattr(e, "out_dim", None)
        if not d:
            raise ValueError(f"cfg['model']['modalities'][{i}]: encoder {modalities[i]['encoder']!r} has no known "
                             f"output size; give encoder_kwargs.dim")
        dims.append(int(d))
    return dims
