"""The straightforward formulation of an InfMasking training step, kept as an oracle and a baseline.

It computes what the reference computes, the way the reference computes it: the per-sample (P, P) covariance
built with a batched matmul, Python loops over masked views and subsets, masked views for every subset (also the
unimodal ones the loss never reads), every token through every layer, and the projection head called once per
(B, E) tensor. It shares the modules (weights) of a method built by `models.methods`, so `infmask bench` and the
tests can compare both formulations side by side on the same parameters.

Single device only (no gather); the fast code's distributed gather is the identity there.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .fusion import random_keep_mask

INF = 1e8


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
    losses, accs = [], []
    if cross:
        losses += [reference_mask_loss(z1[-1], m2, temperature, ratio), reference_mask_loss(z2[-1], m1, temperature, ratio)]
    else:
        losses += [reference_mask_loss(z1[-1], m1, temperature, ratio), reference_mask_loss(z2[-1], m2, temperature, ratio)]
    uniform = 0
    if penalty is not None:
        sets = [s for pair in zip(m1, m2) for s in pair] if only_mask_last else \
            [s for pair in zip(z1, z2) for s in pair]
        for s in sets:
            uniform = uniform + _reference_entropy(s)
        uniform = uniform / len(sets)
    for i in range(len(z1)):
        l3, a1 = reference_nt_xent(z1[i], z2[-1], temperature)
        l4, a2 = reference_nt_xent(z2[i], z1[-1], temperature)
        losses.append((l3 + l4) / 2)
        accs.append((a1 + a2) / 2)
    stacked = torch.stack(losses)
    if weights is not None:
        stacked = stacked * torch.tensor(weights, device=stacked.device, dtype=stacked.dtype)
    loss = stacked.mean()
    if penalty is not None:
        loss = loss - penalty * uniform
    out = {"loss": loss, "ssl_acc": torch.stack(accs).mean()}
    out.update({f"ssl_acc_{i}": a for i, a in enumerate(accs)})
    out.update({f"ssl_loss_{i}": l for i, l in enumerate(losses)})
    return out


def reference_encoder_forward(encoder, x: Sequence, keep: Optional[list] = None,
                              generator: Optional[torch.Generator] = None):
    """The reference's InfFusion forward on one copy: every subset gets an unmasked pass and T masked passes,
    one Python-loop pass per view, every token through every layer (nn.MultiheadAttention).

    `encoder` is a `models.fusion.MultimodalEncoder`. `keep` optionally gives, per subset, a bool (T, B, L_S)
    tensor of kept positions (view t uses keep[i][t]). Returns (z: n+1 (B, E), masked: n+1 lists of T (B, E)).
    """
    fusion = encoder.fusion
    tokens_per_mod, pads = [], []
    for m, xi in enumerate(x):
        t, p = encoder._tokenize_one(m, xi)
        tokens_per_mod.append(t)
        pads.append(p)
    z, masked = [], []
    for i, subset in enumerate(encoder.subsets()):
        toks = [tokens_per_mod[m] for m in subset]
        seq = torch.cat(toks, dim=1)
        B, L, _ = seq.shape
        z.append(fusion._run_reference(seq, None))     # training path: no padding mask
        views = []
        for t in range(encoder.num_mask):
            if keep is not None:
                k = keep[i][t]
            else:
                k = random_keep_mask(1, B, [tt.shape[1] for tt in toks], encoder.mask_ratio,
                                     encoder.keep_rounding, generator, seq.device)[0]
            km = k.unsqueeze(-1).to(seq.dtype)
            xt = seq * km + fusion.mask_token.to(seq.dtype) * (1 - km)
            views.append(fusion._run_reference(xt, None))
        masked.append(views)
    return z, masked


def reference_infmasking_step(method, batch: dict, keep1: Optional[list] = None,
                              keep2: Optional[list] = None) -> dict:
    """One InfMasking loss evaluation the reference's way, on the modules of `method` (a models.methods.InfMasking):
    encoder per copy, reference fusion loops, the head once per (B, E) tensor in the reference's order, and the
    explicit-covariance loss. Returns the loss dict."""
    v1, v2 = batch["views"]
    z1, mo1 = reference_encoder_forward(method.encoder, v1, keep1)
    z2, mo2 = reference_encoder_forward(method.encoder, v2, keep2)
    head = method.head
    z1 = [head(z) for z in z1]
    z2 = [head(z) for z in z2]
    for i in range(len(mo1)):
        mo1[i] = [head(t) for t in mo1[i]]
        mo2[i] = [head(t) for t in mo2[i]]
    m = method.hparams_model
    return reference_infmasking_loss(z1, z2, mo1[-1], mo2[-1], m["temperature"], method.mask_ratio_r(),
                                     weights=m["weights"], cross=m["cross"], penalty=m["penalty"],
                                     only_mask_last=m["only_mask_last"])
