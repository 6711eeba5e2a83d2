"""The straightforward formulation of an InfMasking or CoMM training step: the oracle of the tests and the
baseline of `infmask bench`, the one place the reference's way is written.

It computes what the reference computes, the way the reference computes it: encoders once per copy, a Python
loop over subsets and over the T masked views, masked views for every subset (also the unimodal ones the loss
never reads), every token through every layer (`nn.MultiheadAttention`, the fusion's straightforward pass), the
projection head once per (B, E) tensor, and the loss with the explicit per-sample (P, P) covariance and the
explicit (2B, 2B) logit matrix. It shares the modules (weights) of a method built by `models.methods`, so both
formulations run side by side on the same parameters.

Single device only (no gather); the fast code's distributed gather is the identity there.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from .fusion import random_keep_mask

INF = 1e8
STEP_PHASES = ("encoders", "fusion_unmasked", "fusion_masked", "head", "loss")


# ------------------------------------------------------------------------------------------------------ losses
def reference_nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float):
    """The reference's InfoNCE on already-normalised inputs: the explicit (2B, 2B) logit matrix."""
    N = len(z1)
    eye = torch.eye(N, device=z1.device, dtype=z1.dtype)
    sim_ii = z1 @ z1.T / temperature - INF * eye
    sim_jj = z2 @ z2.T / temperature - INF * eye
    sim_ij = z1 @ z2.T / temperature
    sim = torch.cat([torch.cat([sim_ij, sim_ii], dim=1), torch.cat([sim_jj, sim_ij.T], dim=1)], dim=0)
    loss = -torch.diag(F.log_softmax(sim, dim=1)).mean()
    with torch.no_grad():
        acc = 100 * (sim_ij.argmax(dim=1) == torch.arange(N, device=z1.device)).sum() / N
    return loss, acc


def reference_mask_loss(q: torch.Tensor, mask_out: Sequence[torch.Tensor], temperature: float,
                        ratio: float) -> torch.Tensor:
    """The reference's mask loss on normalised q (B, P) and T normalised views (B, P), explicit covariance."""
    B, P = q.shape
    T = len(mask_out)
    k = torch.stack(list(mask_out), dim=0)                                  # (T, B, P)
    mean = k.mean(dim=0, keepdim=True)
    centred = k - mean
    sigma = torch.bmm(centred.permute(1, 2, 0), centred.permute(1, 0, 2)) / T   # (B, P, P)
    sigma = sigma * ratio / temperature
    mean = mean.squeeze(0)
    l_pos = torch.einsum("nc,nc->n", q, mean + 0.5 * torch.bmm(sigma, q.unsqueeze(-1)).squeeze(-1)).unsqueeze(-1)
    eye = torch.eye(B, device=q.device, dtype=q.dtype)
    l_neg = torch.einsum("be,tne->tbn", q, k) - INF * eye.unsqueeze(0)
    l_neg = list(torch.unbind(l_neg, dim=0)) + [q @ q.T - INF * eye]
    logits = torch.cat([l_pos, torch.cat(l_neg, dim=1)], dim=1) / temperature
    labels = torch.zeros(B, dtype=torch.long, device=q.device)
    quad = 0.5 * torch.bmm(torch.bmm(q.reshape(B, 1, P), sigma), q.reshape(B, P, 1)).mean() / temperature
    return quad + F.cross_entropy(logits, labels)


@torch.no_grad()
def _reference_score(keys: torch.Tensor, eta: float = 0.01) -> torch.Tensor:
    B = keys.shape[0]
    sim = keys @ keys.T
    width = torch.topk((1 - sim).reshape(1, -1), k=B * B // 2)[0][:, -1].reshape(()).clamp(min=0.1)
    gram = torch.exp(sim / width)
    grad = torch.sum(gram.unsqueeze(-1) * (keys.unsqueeze(-2) / width), -2)
    inv = torch.inverse(gram + eta * torch.eye(B, device=keys.device, dtype=keys.dtype))
    return -torch.einsum("ik,kj->ij", inv, grad)


def _reference_entropy(keys: torch.Tensor) -> torch.Tensor:
    return torch.mean(torch.sum(-_reference_score(keys).detach() * keys, -1))


def _subset_nce(z1: Sequence[torch.Tensor], z2: Sequence[torch.Tensor], temperature: float) -> tuple:
    """Per subset i, InfoNCE of z1[i] against z2's full set and of z2[i] against z1's, averaged: (losses, accs)."""
    losses, accs = [], []
    for i in range(len(z1)):
        l3, a1 = reference_nt_xent(z1[i], z2[-1], temperature)
        l4, a2 = reference_nt_xent(z2[i], z1[-1], temperature)
        losses.append((l3 + l4) / 2)
        accs.append((a1 + a2) / 2)
    return losses, accs


def _weighted_mean(losses: list, weights) -> torch.Tensor:
    stacked = torch.stack(losses)
    if weights is not None:
        stacked = stacked * torch.tensor(weights, device=stacked.device, dtype=stacked.dtype)
    return stacked.mean()


def reference_infmasking_loss(z1: Sequence[torch.Tensor], z2: Sequence[torch.Tensor],
                              mask_out1: Sequence[torch.Tensor], mask_out2: Sequence[torch.Tensor],
                              temperature: float, ratio: float, weights: Optional[Sequence[float]] = None,
                              cross: bool = False, penalty: Optional[float] = None,
                              only_mask_last: bool = False) -> dict:
    """The reference's InfMasking loss: z1, z2 lists of n+1 (B, P); mask_out1/2 lists of T (B, P) (full set)."""
    z1 = [F.normalize(z, dim=-1) for z in z1]
    z2 = [F.normalize(z, dim=-1) for z in z2]
    m1 = [F.normalize(z, dim=-1) for z in mask_out1]
    m2 = [F.normalize(z, dim=-1) for z in mask_out2]
    k1, k2 = (m2, m1) if cross else (m1, m2)
    losses = [reference_mask_loss(z1[-1], k1, temperature, ratio), reference_mask_loss(z2[-1], k2, temperature, ratio)]
    uniform = 0
    if penalty is not None:
        sets = [s for pair in zip(m1, m2) for s in pair] if only_mask_last else \
            [s for pair in zip(z1, z2) for s in pair]
        for s in sets:
            uniform = uniform + _reference_entropy(s)
        uniform = uniform / len(sets)
    nce, accs = _subset_nce(z1, z2, temperature)
    losses += nce
    loss = _weighted_mean(losses, weights)
    if penalty is not None:
        loss = loss - penalty * uniform
    out = {"loss": loss, "ssl_acc": torch.stack(accs).mean()}
    out.update({f"ssl_acc_{i}": a for i, a in enumerate(accs)})
    out.update({f"ssl_loss_{i}": l for i, l in enumerate(losses)})
    return out


def reference_comm_loss(z1: Sequence[torch.Tensor], z2: Sequence[torch.Tensor], temperature: float,
                        weights: Optional[Sequence[float]] = None) -> dict:
    """The reference's CoMM loss: InfoNCE of every subset of one copy against the other copy's full set."""
    z1 = [F.normalize(z, dim=-1) for z in z1]
    z2 = [F.normalize(z, dim=-1) for z in z2]
    return {"loss": _weighted_mean(_subset_nce(z1, z2, temperature)[0], weights)}


# ------------------------------------------------------------------------------------------------------ fusion
def reference_tokens(encoder, x: Sequence) -> tuple:
    """One copy's token table (B, L, E) and per-modality token counts; the reference's training path passes no
    padding mask to the fusion."""
    tokens, _, lengths, _ = encoder.tokenize([x])
    return tokens, lengths


def _subset_sequences(encoder, tokens: torch.Tensor, lengths: Sequence[int]) -> list:
    """Each subset's sequence, its modalities' tokens concatenated (slices: no gather to pay for)."""
    offsets = [0]
    for length in lengths:
        offsets.append(offsets[-1] + length)
    return [torch.cat([tokens[:, offsets[m]:offsets[m + 1]] for m in s], dim=1) for s in encoder.subsets()]


def _one_pass(fusion, seq: torch.Tensor) -> torch.Tensor:
    # The transformer on one sequence as the reference runs it. Not `fusion(seq, fast=False)`: that also gathers
    # the positions and checks its inputs on every call, a cost the reference does not pay and the baseline must
    # not either.
    return fusion._run_reference(seq, None)


def reference_subsets(encoder, tokens: torch.Tensor, lengths: Sequence[int]) -> list:
    """The unmasked fused embedding (B, E) of every subset, one pass each."""
    return [_one_pass(encoder.fusion, seq) for seq in _subset_sequences(encoder, tokens, lengths)]


def reference_masked_views(encoder, tokens: torch.Tensor, lengths: Sequence[int], keep: Optional[list] = None,
                           generator: Optional[torch.Generator] = None) -> list:
    """T masked views of every subset, one pass per view: masked positions replaced by the mask token, every
    token through every layer. `keep` optionally gives, per subset, a bool (T, B, L_S) of kept positions (view t
    uses keep[i][t]); otherwise each view draws its own mask. Returns per subset a list of T (B, E)."""
    fusion = encoder.fusion
    out = []
    for i, (subset, seq) in enumerate(zip(encoder.subsets(), _subset_sequences(encoder, tokens, lengths))):
        views = []
        for t in range(encoder.num_mask):
            if keep is not None:
                k = keep[i][t]
            else:
                k = random_keep_mask(1, seq.shape[0], [lengths[m] for m in subset], encoder.mask_ratio,
                                     encoder.keep_rounding, generator, seq.device)[0]
            km = k.unsqueeze(-1).to(seq.dtype)
            views.append(_one_pass(fusion, seq * km + fusion.mask_token.to(seq.dtype) * (1 - km)))
        out.append(views)
    return out


def reference_encoder_forward(encoder, x: Sequence, keep: Optional[list] = None,
                              generator: Optional[torch.Generator] = None):
    """The reference's InfFusion forward on one copy: every subset gets an unmasked pass and T masked passes.

    `encoder` is a `models.fusion.MultimodalEncoder`; `keep` as in `reference_masked_views`.
    Returns (z: n+1 (B, E), masked: n+1 lists of T (B, E)).
    """
    tokens, lengths = reference_tokens(encoder, x)
    return (reference_subsets(encoder, tokens, lengths),
            reference_masked_views(encoder, tokens, lengths, keep, generator))


# -------------------------------------------------------------------------------------------------------- step
def _is_infmasking(method) -> bool:
    name = type(method).__name__
    if name not in ("InfMasking", "CoMM"):
        raise ValueError(f"method must be an InfMasking or CoMM module, got {name}")
    return name == "InfMasking"


def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _no_mark(name: str) -> None:
    return None


def reference_step(method, batch: dict, mark: Callable[[str], None] = _no_mark, keep1: Optional[list] = None,
                   keep2: Optional[list] = None) -> dict:
    """The loss of one InfMasking or CoMM training step the reference's way, on the modules of `method`.

    `mark(name)` is called as each of `STEP_PHASES` ends, so a caller can read a clock there. `keep1`/`keep2`:
    per subset a bool (T, B, L_S) for copies 1 and 2 (see `reference_masked_views`). The head runs in the
    reference's order (unmasked subsets of each copy, then the masked views subset by subset, copy 1 then 2),
    which fixes its BatchNorm running statistics. The loss runs in float32 with autocast off, as the fast losses
    do."""
    masked = _is_infmasking(method)
    enc = method.encoder
    tables = [reference_tokens(enc, v) for v in batch["views"]]
    mark("encoders")
    zs = [reference_subsets(enc, tokens, lengths) for tokens, lengths in tables]
    mark("fusion_unmasked")
    views = [reference_masked_views(enc, tokens, lengths, keep) for (tokens, lengths), keep
             in zip(tables, (keep1, keep2))] if masked else []
    mark("fusion_masked")
    head = method.head
    hz = [[head(z) for z in zc] for zc in zs]
    hm = [[None] * len(v) for v in views]
    for i in range(len(views[0]) if views else 0):
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
            out = reference_comm_loss(hz[0], hz[1], float(m["temperature"]), weights=m["weights"])
    mark("loss")
    return out
