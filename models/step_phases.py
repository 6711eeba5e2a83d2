"""The forward pass of an InfMasking or CoMM training step cut into phases, in two formulations, for `infmask bench`.

* fast: what `InfMasking.compute_loss` / `CoMM.compute_loss` compute, the same calls in the same order, except
  that the fusion of the unmasked subsets and of the masked views run as two `fuse` calls instead of one, so each
  can be timed (the first layer's token table is then projected twice; the real step projects it once).
* straightforward: the reference's way (`models.reference_impl`): encoders once per copy, a Python loop over
  subsets and over the T masked views, masked views for every subset (also the unimodal ones the loss never
  reads), every token through every layer (`nn.MultiheadAttention`), the projection head once per (B, E) tensor,
  and the loss with the explicit per-sample (P, P) covariance.

Both share the modules (weights) of one method built by `models.methods`. `mark(name)` is called as each phase
ends (encoders, fusion_unmasked, fusion_masked, head, loss), so a caller can synchronise the device and read a
clock there; augmentation, backward and the optimiser step are the caller's.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .fusion import random_keep_mask
from .losses import comm_loss, infmasking_loss
from .reference_impl import reference_infmasking_loss, reference_nt_xent

FORWARD_PHASES = ("encoders", "fusion_unmasked", "fusion_masked", "head", "loss")
FORMULATIONS = ("fast", "straightforward")


def _noop(name: str) -> None:
    return None


def _is_infmasking(method) -> bool:
    name = type(method).__name__
    if name not in ("InfMasking", "CoMM"):
        raise ValueError(f"method must be an InfMasking or CoMM module, got {name}")
    return name == "InfMasking"


def fast_forward(method, batch: dict, mark: Callable[[str], None] = _noop,
                 keep: Optional[list] = None) -> dict:
    """The method's own loss on `batch`, phase by phase (see module docstring). `keep` as in
    `MultimodalEncoder.forward_copies` (one bool (T, 2B, L_S) per masked subset)."""
    masked = _is_infmasking(method)
    enc = method.encoder
    v1, v2 = batch["views"]
    tokens, padding, lengths, sizes = enc.tokenize([v1, v2])
    if not enc.mask_padding:
        padding = None
    mark("encoders")
    subset_pos = enc.subset_positions(lengths)
    z, _ = enc.fusion.fuse(tokens, padding, subset_pos, [], fast=enc.fast_fusion)
    mark("fusion_unmasked")
    masked_ids, jobs = enc.mask_jobs(tokens, lengths, subset_pos, masked, None, keep)
    zm = enc.fusion.fuse(tokens, padding, [], jobs, fast=enc.fast_fusion)[1] if masked else []
    mark("fusion_masked")
    outs = enc.split_copies(z, zm, masked_ids, sizes)
    m = method.hparams_model
    if masked:
        (z1, z2), (m1, m2) = method.project(outs)
        mark("head")
        r = method.mask_ratio_r()
        out = infmasking_loss(z1, z2, m1[-1], m2[-1], float(m["temperature"]), r, weights=m["weights"],
                              cross=bool(m["cross"]), penalty=m["penalty"], only_mask_last=bool(m["only_mask_last"]))
    else:
        blocks = outs[0].z + outs[1].z
        h = method.head(torch.cat(blocks), groups=len(blocks)).split(blocks[0].shape[0])
        mark("head")
        n_sub = len(outs[0].z)
        out = comm_loss(list(h[:n_sub]), list(h[n_sub:]), float(m["temperature"]), weights=m["weights"])
    mark("loss")
    return out


def _reference_comm_loss(z1: list, z2: list, temperature: float, weights=None) -> dict:
    z1 = [F.normalize(z, dim=-1) for z in z1]
    z2 = [F.normalize(z, dim=-1) for z in z2]
    losses = []
    for i in range(len(z1)):
        l3, _ = reference_nt_xent(z1[i], z2[-1], temperature)
        l4, _ = reference_nt_xent(z2[i], z1[-1], temperature)
        losses.append((l3 + l4) / 2)
    stacked = torch.stack(losses)
    if weights is not None:
        stacked = stacked * torch.tensor(weights, device=stacked.device, dtype=stacked.dtype)
    return {"loss": stacked.mean()}


def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def straightforward_forward(method, batch: dict, mark: Callable[[str], None] = _noop,
                            keep1: Optional[list] = None, keep2: Optional[list] = None) -> dict:
    """The same loss the reference's way, phase by phase (see module docstring); `keep1`/`keep2` per subset a
    bool (T, B, L_S) for copies 1 and 2, as `models.reference_impl.reference_encoder_forward` takes them.
    The loss runs in float32 with autocast off, as the fast losses do."""
    masked = _is_infmasking(method)
    enc = method.encoder
    fusion = enc.fusion
    copies = []
    for v in batch["views"]:
        copies.append([enc._tokenize_one(m, x)[0] for m, x in enumerate(v)])
    mark("encoders")
    zs = []
    for toks in copies:
        zs.append([fusion._run_reference(torch.cat([toks[m] for m in s], dim=1), None) for s in enc.subsets()])
    mark("fusion_unmasked")
    views = []
    if masked:
        for c, toks in enumerate(copies):
            keep = (keep1, keep2)[c]
            per_subset = []
            for i, s in enumerate(enc.subsets()):
                parts = [toks[m] for m in s]
                seq = torch.cat(parts, dim=1)
                out = []
                for t in range(enc.num_mask):
                    if keep is not None:
                        k = keep[i][t]
                    else:
                        k = random_keep_mask(1, seq.shape[0], [p.shape[1] for p in parts], enc.mask_ratio,
                                             enc.keep_rounding, None, seq.device)[0]
                    km = k.unsqueeze(-1).to(seq.dtype)
                    xt = seq * km + fusion.mask_token.to(seq.dtype) * (1 - km)
                    out.append(fusion._run_reference(xt, None))
                per_subset.append(out)
            views.append(per_subset)
    mark("fusion_masked")
    head = method.head
    hz = [[head(z) for z in zc] for zc in zs]
    hm = [[None] * len(v) for v in views]
    for i in range(len(views[0]) if views else 0):     # the reference's order: subset by subset, copy 1 then 2
        for c in range(len(views)):
            hm[c][i] = [head(t) for t in views[c][i]]
    mark("head")
    m = method.hparams_model
    with torch.autocast(device_type=hz[0][0].device.type, enabled=False):
        hz = [[_upcast(z) for z in zc] for zc in hz]
        if masked:
            out = reference_infmasking_loss(hz[0], hz[1], [_upcast(t) for t in hm[0][-1]],
                                            [_upcast(t) for t in hm[1][-1]], float(m["temperature"]),
                                            method.mask_ratio_r(), weights=m["weights"], cross=bool(m["cross"]),
                                            penalty=m["penalty"], only_mask_last=bool(m["only_mask_last"]))
        else:
            out = _reference_comm_loss(hz[0], hz[1], float(m["temperature"]), weights=m["weights"])
    mark("loss")
    return out


def forward(formulation: str, method, batch: dict, mark: Callable[[str], None] = _noop) -> dict:
    if formulation == "fast":
        return fast_forward(method, batch, mark)
    if formulation == "straightforward":
        return straightforward_forward(method, batch, mark)
    raise ValueError(f"formulation must be one of {FORMULATIONS}, got {formulation!r}")
