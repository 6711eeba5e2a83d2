"""Losses as pure functions of tensors.

Every public loss L2-normalises its inputs and all-gathers them across ranks (gradient to the local slice) before
computing, as the reference does; on one device the gather is the identity. Losses run in float32 at least:
inputs in half precision are upcast and autocast is switched off inside.

The InfMasking mask loss uses the closed form q^T Sigma q = (1/T) sum_t (q . (k_t - mu))^2, so the per-sample
(P, P) covariances are never built; `models.reference` keeps the explicit formulation as an oracle.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from itertools import combinations
from typing import Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F



# --------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------
def _world() -> tuple:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums the gradients of every rank and returns this rank's slice."""

    @staticmethod
    def forward(ctx, x):
        world, _ = _world()
        out = [torch.zeros_like(x) for _ in range(world)]
        dist.all_gather(out, x.contiguous())
        return torch.cat(out, dim=0)

    @staticmethod
    def backward(ctx, grad):
        world, rank = _world()
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad.chunk(world, dim=0)[rank]


def gather_with_grad(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Concatenate `x` from every rank along `dim`; the gradient flows back to the local slice.
    The identity when torch.distributed is not initialised or the world size is 1."""
    world, _ = _world()
    if world == 1:
        return x
    if dim == 0:
        return _GatherWithGrad.apply(x)
    return _GatherWithGrad.apply(x.transpose(0, dim)).transpose(0, dim)


def rank() -> int:
    return _world()[1]


@contextmanager
def _full_precision(device_type: str):
    if device_type in ("cuda", "cpu", "xpu", "mps"):
        with torch.autocast(device_type=device_type, enabled=False):
            yield
    else:
        yield


def _prep(x: torch.Tensor) -> torch.Tensor:
    """Upcast half precision, L2-normalise along the last axis."""
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    return F.normalize(x, p=2, dim=-1)


def _check_temperature(temperature) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0 \
            or not math.isfinite(temperature):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return float(temperature)


def _check_pair(name_a: str, a, name_b: str, b):
    for name, t in ((name_a, a), (name_b, b)):
        if not isinstance(t, torch.Tensor) or t.ndim != 2:
            raise ValueError(f"{name} must be a 2-D tensor (B, P), got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    if a.shape != b.shape:
        raise ValueError(f"{name_b} has shape {tuple(b.shape)}, expected {tuple(a.shape)} like {name_a} "
                         f"(mismatched batch sizes or feature sizes)")
    if a.shape[0] < 2:
        raise ValueError(f"{name_a}: contrastive losses need a batch of at least 2, got {a.shape[0]}")


def mask_ratio_schedule(mask_lambda: float, epoch: int, max_epochs: int) -> float:
    """r = lambda (e + 1) / E_max, e 0-based: from lambda/E_max in the first epoch to lambda in the last."""
    if not max_epochs or max_epochs <= 0:
        raise ValueError(f"max_epochs must be > 0, got {max_epochs!r}")
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch!r}")
    if mask_lambda < 0:
        raise ValueError(f"mask_lambda must be >= 0, got {mask_lambda!r}")
    return float(mask_lambda) * (epoch + 1) / max_epochs


# --------------------------------------------------------------------------------------------------------------
# NT-Xent
# --------------------------------------------------------------------------------------------------------------
# The reference writes NT-Xent as 2B rows of 2B logits. The same numbers come from log-sum-exps over the blocks,
# combined with logaddexp, which never concatenates the blocks and lets the self-similarity block of a tensor,
# shared by several terms (z_n enters every L_i and the mask loss), be computed once.
def _offdiag(S: torch.Tensor) -> torch.Tensor:
    """Self-similarity with its diagonal removed, in place. The reference subtracts 1e8, whose exp is exactly 0 in
    float32 and float64; -inf gives the same values and gradients."""
    eye = torch.eye(S.shape[0], dtype=torch.bool, device=S.device)
    return S.masked_fill_(eye, float("-inf"))


def _self_lse(x: torch.Tensor, temperature: float) -> torch.Tensor:
    """Row-wise log-sum-exp of x x^T / tau without the diagonal: (B,)."""
    return torch.logsumexp(_offdiag((x @ x.t()).div_(temperature)), dim=1)


def _nce_from(A: torch.Tensor, lse_u: torch.Tensor, lse_v: torch.Tensor):
    """NT-Xent from A = u v^T / tau and the self-similarity log-sum-exps of u and v.

    First-half row b: logits [A_b,:, U_b,:], target A_bb; second-half row b: [V_b,:, A_:,b], target A_bb."""
    pos = torch.diagonal(A)
    rows = torch.logaddexp(torch.logsumexp(A, dim=1), lse_u) - pos
    cols = torch.logaddexp(torch.logsumexp(A, dim=0), lse_v) - pos
    loss = (rows.mean() + cols.mean()) / 2
    with torch.no_grad():
        acc = 100.0 * (A.argmax(dim=1) == torch.arange(A.shape[0], device=A.device)).to(A.dtype).mean()
    return loss, acc


def _nt_xent(u: torch.Tensor, v: torch.Tensor, temperature: float):
    """NT-Xent on normalised, gathered u, v (B, P) -> (loss, accuracy in %)."""
    return _nce_from((u @ v.t()).div_(temperature), _self_lse(u, temperature), _self_lse(v, temperature))


def nt_xent(u: torch.Tensor, v: torch.Tensor, temperature: float):
    """Symmetric NT-Xent (SimCLR; the reference step 1) -> (loss, ssl accuracy in %)."""
    _check_pair("u", u, "v", v)
    temperature = _check_temperature(temperature)
    with _full_precision(u.device.type):
        return _nt_xent(gather_with_grad(_prep(u)), gather_with_grad(_prep(v)), temperature)


# --------------------------------------------------------------------------------------------------------------
# InfMasking
# --------------------------------------------------------------------------------------------------------------
def _mask_loss(q: torch.Tensor, k: torch.Tensor, temperature: float, ratio: float,
               q_self_lse: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mask loss on normalised, gathered q (B, P) and k (T, B, P), closed form:
    M = mean_b CE([pos_b, negatives] / tau, 0) + r/(2 tau^2) mean_b q_b^T Sigma_b q_b,
    pos_b = q_b . mu_b + r/(2 tau) q_b^T Sigma_b q_b, with q_b^T Sigma_b q_b = (1/T) sum_t (q_b . (k_tb - mu_b))^2.
    Negatives: q_b . k_tj and q_b . q_j for j != b. `q_self_lse` is _self_lse(q, tau) if already computed."""
    T, B, _ = k.shape
    mu = k.mean(dim=0)                                              # (B, P), not re-normalised
    proj = torch.einsum("bp,tbp->tb", q, k - mu)                    # q_b . (k_tb - mu_b)
    quad = proj.pow(2).mean(dim=0)                                  # q_b^T Sigma_b q_b (biased, / T)
    pos = ((q * mu).sum(-1) + ratio / (2 * temperature) * quad) / temperature
    eye = torch.eye(B, dtype=torch.bool, device=q.device).unsqueeze(1)              # (B, 1, B)
    # in place: the matmul's backward needs its inputs, not its output (saves two (B, T, B) buffers)
    neg = torch.einsum("bp,tjp->btj", q, k).div_(temperature).masked_fill_(eye, float("-inf"))
    if q_self_lse is None:
        q_self_lse = _self_lse(q, temperature)
    lse = torch.logsumexp(torch.stack([pos, torch.logsumexp(neg.reshape(B, T * B), dim=1), q_self_lse]), dim=0)
    return (lse - pos).mean() + ratio / (2 * temperature ** 2) * quad.mean()


def _check_ratio_schedule(ratio) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) or ratio < 0:
        raise ValueError(f"ratio (the mask-loss weight r = lambda (e+1)/E_max) must be a finite number >= 0, "
                         f"got {ratio!r}")
    return float(ratio)


def _as_views(name: str, k, batch: int, dim: int) -> torch.Tensor:
    if isinstance(k, (list, tuple)):
        if not k:
            raise ValueError(f"{name} must hold at least one masked view")
        k = torch.stack(list(k))
    if not isinstance(k, torch.Tensor) or k.ndim != 3 or k.shape[0] < 1:
        raise ValueError(f"{name} must be a (T, B, P) tensor or a list of T (B, P) tensors, T >= 1")
    if k.shape[1:] != (batch, dim):
        raise ValueError(f"{name} has views of shape {tuple(k.shape[1:])}, expected ({batch}, {dim}) "
                         f"(mismatched batch sizes or feature sizes)")
    return k


def mask_loss(q: torch.Tensor, k, temperature: float, ratio: float) -> torch.Tensor:
    """InfMasking mask loss M(q, {k_t}) of one copy: q (B, P) the unmasked full-set
    projection, k (T, B, P) its masked views; `ratio` is r = lambda (e+1)/E_max (>= 0, may exceed 1)."""
    if not isinstance(q, torch.Tensor) or q.ndim != 2:
        raise ValueError("q must be a 2-D tensor (B, P)")
    k = _as_views("k", k, q.shape[0], q.shape[1])
    temperature, ratio = _check_temperature(temperature), _check_ratio_schedule(ratio)
    with _full_precision(q.device.type):
        return _mask_loss(gather_with_grad(_prep(q)), gather_with_grad(_prep(k), dim=1), temperature, ratio)


@torch.no_grad()
def _stein_score(keys: torch.Tensor, eta: float = 0.01) -> torch.Tensor:
    """Stein estimate of grad log q at each row of `keys` (B, P), the reference step 4."""
    B = keys.shape[0]
    sim = keys @ keys.t()
    k = B * B // 2
    width = torch.topk((1 - sim).reshape(-1), k=max(k, 1)).values[-1].clamp(min=0.1)   # ~ median distance
    gram = torch.exp(sim / width)
    grad = gram.sum(dim=1, keepdim=True) * keys / width
    eye = torch.eye(B, device=keys.device, dtype=keys.dtype)
    return -torch.linalg.solve(gram + eta * eye, grad)


def entropy_surrogate(keys: torch.Tensor) -> torch.Tensor:
    """H = mean_b sum_d (-s_bd) K_bd with the score s held constant: d H / d K_b = -s_b / B."""
    return (-_stein_score(keys) * keys).sum(-1).mean()


def _check_lists(z1, z2, min_len: int = 2):
    if not isinstance(z1, (list, tuple)) or not isinstance(z2, (list, tuple)):
        raise ValueError("z1 and z2 must be lists of (B, P) tensors, one per subset [{1}, ..., {n}, all]")
    if len(z1) != len(z2):
        raise ValueError(f"z2 holds {len(z2)} embeddings, z1 holds {len(z1)} (wrong number of modalities)")
    if len(z1) < min_len:
        raise ValueError(f"z1 must hold n+1 >= {min_len} embeddings (n >= 1 modalities and the full set), "
                         f"got {len(z1)} (wrong number of modalities)")
    for i, (a, b) in enumerate(zip(z1, z2)):
        _check_pair(f"z1[{i}]", a, f"z2[{i}]", b)
        if a.shape != z1[0].shape:
            raise ValueError(f"z1[{i}] has shape {tuple(a.shape)}, expected {tuple(z1[0].shape)} "
                             f"(mismatched batch sizes)")


def _check_weights(weights, n_terms: int):
    if weights is None:
        return None
    try:
        w = [float(x) for x in weights]
    except (TypeError, ValueError):
        raise ValueError(f"weights must be None or a list of {n_terms} numbers, got {weights!r}") from None
    if len(w) != n_terms:
        raise ValueError(f"weights must hold {n_terms} numbers (one per loss term), got {len(w)}")
    return w


def _combine(terms: list, weights) -> torch.Tensor:
    stacked = torch.stack(terms)
    if weights is not None:
        stacked = stacked * torch.tensor(weights, dtype=stacked.dtype, device=stacked.device)
    return stacked.mean()


def _infonce_terms(z1: list, z2: list, temperature: float):
    """L_i = (NCE(z1_i, z2_n) + NCE(z2_i, z1_n)) / 2 and its accuracy, for every subset i (the last, n, is the
    full set). Self-similarity blocks are computed once per tensor; for i = n the second similarity matrix is the
    transpose of the first. Also returns the self-similarity log-sum-exps of z1_n and z2_n for the mask loss."""
    lse1 = [_self_lse(z, temperature) for z in z1]
    lse2 = [_self_lse(z, temperature) for z in z2]
    n = len(z1) - 1
    losses, accs = [], []
    for i in range(n + 1):
        A = (z1[i] @ z2[n].t()).div_(temperature)
        l1, acc1 = _nce_from(A, lse1[i], lse2[n])
        A2 = A.t() if i == n else (z2[i] @ z1[n].t()).div_(temperature)
        l2, acc2 = _nce_from(A2, lse2[i], lse1[n])
        losses.append((l1 + l2) / 2)
        accs.append((acc1 + acc2) / 2)
    return losses, accs, (lse1[n], lse2[n])


def infmasking_loss(z1: Sequence[torch.Tensor], z2: Sequence[torch.Tensor], k1, k2, temperature: float,
                    ratio: float, weights: Optional[Sequence[float]] = None, cross: bool = False,
                    penalty: Optional[float] = None, only_mask_last: bool = False) -> dict:
    """The InfMasking loss.

    z1, z2: n+1 projections (B, P) of the unmasked subsets [{1}, ..., {n}, all] of copies 1 and 2.
    k1, k2: masked views of the full set, (T, B, P) or a list of T (B, P).
    ratio: r = lambda (e+1)/E_max. weights: n+3 numbers for [M1, M2, L_0, ..., L_n] or None.
    Returns {"loss", "ssl_acc", "ssl_acc_0".."ssl_acc_n", "ssl_loss_0".."ssl_loss_{n+2}"}; the loss is
    (1/(n+3)) sum_k w_k l_k, minus penalty * H when penalty is set.
    """
    _check_lists(z1, z2)
    B, P = z1[0].shape
    k1 = _as_views("k1", k1, B, P)
    k2 = _as_views("k2", k2, B, P)
    if k1.shape != k2.shape:
        raise ValueError(f"k2 has shape {tuple(k2.shape)}, expected {tuple(k1.shape)} like k1 "
                         f"(wrong number of views)")
    temperature, ratio = _check_temperature(temperature), _check_ratio_schedule(ratio)
    n_terms = len(z1) + 2
    weights = _check_weights(weights, n_terms)
    if penalty is not None and (isinstance(penalty, bool) or not isinstance(penalty, (int, float))):
        raise ValueError(f"penalty must be None or a number, got {penalty!r}")
    T = k1.shape[0]
    with _full_precision(z1[0].device.type):
        z1 = [gather_with_grad(_prep(z)) for z in z1]
        z2 = [gather_with_grad(_prep(z)) for z in z2]
        k1 = gather_with_grad(_prep(k1), dim=1)
        k2 = gather_with_grad(_prep(k2), dim=1)
        ka, kb = (k2, k1) if cross else (k1, k2)
        nce, accs, (lse1, lse2) = _infonce_terms(z1, z2, temperature)
        terms = [_mask_loss(z1[-1], ka, temperature, ratio, lse1), _mask_loss(z2[-1], kb, temperature, ratio, lse2)]
        terms += nce
        loss = _combine(terms, weights)
        if penalty is not None:
            sets = [k1[t] for t in range(T)] + [k2[t] for t in range(T)] if only_mask_last else list(z1) + list(z2)
            # the reference interleaves (copy 1, copy 2) per index; the mean is the same
            loss = loss - penalty * torch.stack([entropy_surrogate(s) for s in sets]).mean()
        out = {"loss": loss, "ssl_acc": torch.stack(accs).mean()}
        out.update({f"ssl_acc_{i}": a for i, a in enumerate(accs)})
        out.update({f"ssl_loss_{i}": t for i, t in enumerate(terms)})
    return out


# --------------------------------------------------------------------------------------------------------------
# Baselines
# --------------------------------------------------------------------------------------------------------------
def comm_loss(z1: Sequence[torch.Tensor], z2: Sequence[torch.Tensor], temperature: float,
              weights: Optional[Sequence[float]] = None) -> dict:
    """CoMM: (1/(n+1)) sum_i w_i L_i over the n+1 subsets, L_i as in InfMasking."""
    _check_lists(z1, z2)
    temperature = _check_temperature(temperature)
    weights = _check_weights(weights, len(z1))
    with _full_precision(z1[0].device.type):
        z1 = [gather_with_grad(_prep(z)) for z in z1]
        z2 = [gather_with_grad(_prep(z)) for z in z2]
        terms, accs, _ = _infonce_terms(z1, z2, temperature)
        out = {"loss": _combine(terms, weights), "ssl_acc": torch.stack(accs).mean()}
        out.update({f"ssl_acc_{i}": a for i, a in enumerate(accs)})
        out.update({f"ssl_loss_{i}": t for i, t in enumerate(terms)})
    return out


def clip_loss(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor) -> dict:
    """CLIP loss (Cross): symmetric cross-entropy of s a b^T against the diagonal.

    `logit_scale` is the multiplier s = exp(learned log-scale), as the reference passes it. Under DDP the local
    rows are compared with the other modality gathered from every rank and targets are offset by rank. The
    gather keeps the gradient (the reference's gather does not), so multi-GPU gradients equal single-GPU ones.
    """
    _check_pair("a", a, "b", b)
    scale = torch.as_tensor(logit_scale)
    if scale.numel() != 1 or not bool(torch.isfinite(scale.detach()).all()) or float(scale.detach()) <= 0:
        raise ValueError(f"logit_scale must be a positive scalar (the multiplier exp(log-scale)), got {logit_scale!r}")
    with _full_precision(a.device.type):
        a, b = _prep(a), _prep(b)
        scale = scale.to(device=a.device, dtype=a.dtype)
        a_all, b_all = gather_with_grad(a), gather_with_grad(b)
        B = a.shape[0]
        labels = rank() * B + torch.arange(B, device=a.device)
        logits_a = scale * a @ b_all.t()
        logits_b = scale * b @ a_all.t()
        loss = (F.cross_entropy(logits_a, labels) + F.cross_entropy(logits_b, labels)) / 2
        with torch.no_grad():
            acc = 100.0 * (logits_a.argmax(dim=-1) == labels).float().mean()
    return {"loss": loss, "ssl_acc": acc, "logit_scale": scale.detach()}


def cross_self_loss(x_embed: Sequence[torch.Tensor], view1_embed: Sequence[torch.Tensor],
                    view2_embed: Sequence[torch.Tensor], temperature: float = 0.1, ssl_scale: float = 1.0) -> dict:
    """Cross+Self: cross-modal NT-Xent on un-augmented inputs plus per-modality SimCLR.

    x_embed[m] = h_m f_m(x_m); view1_embed[m], view2_embed[m] = h_m f_m of the two augmentations of modality m.
    loss = mean over modality pairs of NT-Xent(x_i, x_j) + ssl_scale * mean_m NT-Xent(view1_m, view2_m); with two
    modalities this is the reference's cross + ssl_scale * (ssl_1 + ssl_2) / 2.
    Keys: loss, ssl_acc (cross), ssl_loss_0 (cross), ssl_loss_{m+1} / ssl_acc_{m+1} (self term of modality m).
    """
    n = len(x_embed)
    if n < 2 or len(view1_embed) != n or len(view2_embed) != n:
        raise ValueError(f"x_embed, view1_embed and view2_embed must each hold n >= 2 tensors, got "
                         f"{len(x_embed)}, {len(view1_embed)}, {len(view2_embed)} (wrong number of modalities)")
    for m in range(n):
        _check_pair("x_embed[0]", x_embed[0], f"x_embed[{m}]", x_embed[m])
        _check_pair("view1_embed[m]", view1_embed[m], "view2_embed[m]", view2_embed[m])
        if view1_embed[m].shape[0] != x_embed[0].shape[0]:
            raise ValueError("view1_embed: mismatched batch sizes")
    temperature = _check_temperature(temperature)
    with _full_precision(x_embed[0].device.type):
        xs = [gather_with_grad(_prep(x)) for x in x_embed]
        cross = [_nt_xent(xs[i], xs[j], temperature) for i, j in combinations(range(n), 2)]
        selfs = [_nt_xent(gather_with_grad(_prep(a)), gather_with_grad(_prep(b)), temperature)
                 for a, b in zip(view1_embed, view2_embed)]
        cross_loss = torch.stack([c[0] for c in cross]).mean()
        self_loss = torch.stack([s[0] for s in selfs]).mean()
        out = {"loss": cross_loss + ssl_scale * self_loss,
               "ssl_acc": torch.stack([c[1] for c in cross]).mean(), "ssl_loss_0": cross_loss}
        for m, (l, a) in enumerate(selfs):
            out[f"ssl_loss_{m + 1}"] = l
            out[f"ssl_acc_{m + 1}"] = a
    return out


def cmc_loss(zs: Sequence[torch.Tensor], temperature: float = 0.1) -> dict:
    """CMC: mean over all modality pairs (i < j) of NT-Xent(z_i, z_j).
    Keys: loss, ssl_acc (mean), ssl_loss_{i}_{j}, ssl_acc_{i}_{j}."""
    if not isinstance(zs, (list, tuple)) or len(zs) < 2:
        raise ValueError("zs must be a list of n >= 2 (B, P) tensors (wrong number of modalities)")
    for m in range(1, len(zs)):
        _check_pair("zs[0]", zs[0], f"zs[{m}]", zs[m])
    temperature = _check_temperature(temperature)
    with _full_precision(zs[0].device.type):
        z = [gather_with_grad(_prep(x)) for x in zs]
        out, losses, accs = {}, [], []
        for i, j in combinations(range(len(z)), 2):
            l, a = _nt_xent(z[i], z[j], temperature)
            out[f"ssl_loss_{i}_{j}"], out[f"ssl_acc_{i}_{j}"] = l, a
            losses.append(l)
            accs.append(a)
        out["loss"] = torch.stack(losses).mean()
        out["ssl_acc"] = torch.stack(accs).mean()
    return out
