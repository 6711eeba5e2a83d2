"""Fusion transformer and the multimodal encoder (the random masked views they take: `models/masking.py`).

Two implementations of the same function, chosen by `fast`:

* straightforward (`fast=False`): every subset and masked view is its own sequence; masked positions are replaced
  by the mask token; every token goes through every layer with `nn.MultiheadAttention`. This is the reference's
  computation (stacked on the batch axis instead of a Python loop) and the oracle for the fast path.
* fast (`fast=True`, default), exact up to floating-point summation order:
  1. All masked positions of a view hold the same vector (the mask token, no positional embedding). Attention,
     LayerNorm and MLP treat equal tokens identically, so they stay equal through every layer. One shared mask
     token per view stands for all c of them: its attention logit gets + log(c), since c equal terms
     exp(s) v sum to exp(s + log c) v. A view then has K + 2 tokens (CLS, kept tokens, mask token) instead of
     L + 1; with c = 0 the mask token is left out.
  2. Only the CLS output is read, so the last layer computes queries, attention and MLP for the CLS row alone
     (keys and values still for every token).
  3. The first layer's LayerNorm and q/k/v projections act token by token, and every subset and masked view is
     made of the same tokens (plus CLS and the mask token). They are computed once per input on the token table
     and gathered per view, instead of once per view.
  4. Views and subsets of equal sequence length are stacked on the batch axis and run as one pass.

Key-padding masks (True = padding) refer to the original token positions. In a masked view a padded position
is ignored as a key whether it was kept or masked, so the mask token's multiplicity counts only masked
positions that are not padding. The reference never passes padding on its training path; the
multimodal encoder's `mask_padding` chooses.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .masking import ROUNDINGS, check_mask_ratio, keep_count, random_keep_mask  # noqa: F401  (re-exported)

_CONSTANTS: dict = {}


def _constant_long(values: tuple, device) -> torch.Tensor:
    """A small constant index tensor on `device`, made once (bounded cache)."""
    key = (values, str(device))
    t = _CONSTANTS.get(key)
    if t is None:
        if len(_CONSTANTS) > 4096:
            _CONSTANTS.clear()
        with torch.inference_mode(False):   # usable later by autograd even if first made during inference
            t = _CONSTANTS[key] = torch.tensor(values, device=device, dtype=torch.long)
    return t


# --------------------------------------------------------------------------------------------------------------
# Transformer
# --------------------------------------------------------------------------------------------------------------
class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """Pre-LN block: x + MHA(LN1(x)), then x + W2 QuickGELU(W1 LN2(x)). Names follow the reference."""

    def __init__(self, width: int, n_heads: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, n_heads, dropout=0.0, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, 4 * width)),
            ("gelu", QuickGELU()),
            ("c_proj", nn.Linear(4 * width, width)),
        ]))

    def forward_reference(self, x: torch.Tensor, key_padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, key_padding_mask=key_padding_mask)[0]
        return x + self.mlp(self.ln_2(x))


def _bias_from_padding(pad: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
    if pad is None:
        return None
    return torch.zeros(pad.shape, dtype=dtype, device=pad.device).masked_fill(pad, float("-inf"))


@dataclass
class _Job:
    rows: torch.Tensor            # (N, S, P): gathered first-layer projections [| raw tokens]
    bias: Optional[torch.Tensor]  # (N, S) additive key bias, or None
    views: int                    # N = views * B


class FusionTransformer(nn.Module):
    """CLS-pooled pre-LN transformer over concatenated modality tokens, with the reference's initialisation:
    CLS ~ N(0, 1); in_proj ~ N(0, E^-1/2); out_proj and c_proj ~ N(0, E^-1/2 (2 n_layers)^-1/2);
    c_fc ~ N(0, (2E)^-1/2); mask token ~ N(0, 0.02) truncated to +-0.02; biases and LayerNorms default."""

    def __init__(self, embed_dim: int, n_layers: int = 1, n_heads: int = 8, mask_token: bool = True):
        super().__init__()
        if embed_dim <= 0 or n_heads <= 0 or embed_dim % n_heads:
            raise ValueError(f"embed_dim={embed_dim} must be a positive multiple of n_heads={n_heads}")
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        self.width, self.n_layers, self.n_heads = embed_dim, n_layers, n_heads
        self.cls_token = nn.Parameter(torch.randn(1, 1, embed_dim))
        # CoMM has no masked views: without a mask token no parameter goes unused (DDP needs that).
        if mask_token:
            self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
            nn.init.trunc_normal_(self.mask_token, std=0.02, a=-0.02, b=0.02)
        else:
            self.register_parameter("mask_token", None)
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(embed_dim, n_heads) for _ in range(n_layers)])
        self.norm = nn.LayerNorm(embed_dim)
        proj_std = embed_dim ** -0.5 * (2 * n_layers) ** -0.5
        for blk in self.resblocks:
            nn.init.normal_(blk.attn.in_proj_weight, std=embed_dim ** -0.5)
            nn.init.normal_(blk.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(blk.mlp.c_fc.weight, std=(2 * embed_dim) ** -0.5)
            nn.init.normal_(blk.mlp.c_proj.weight, std=proj_std)

    # ---------------------------------------------------------------------------------------------- public API
    def forward(self, tokens, padding=None, fast: bool = True) -> torch.Tensor:
        """Unmasked fused CLS embedding (B, E) of one subset. `tokens`: (B, L, E) or a list of per-modality
        token tensors (concatenated in order); `padding`: (B, L) bool / list / None."""
        tokens, padding = _concat_tokens(tokens, padding)
        return self.fuse(tokens, padding, subsets=[None], masked=[], fast=fast)[0][0]

    def fuse(self, tokens: torch.Tensor, padding: Optional[torch.Tensor], subsets: Sequence[Optional[torch.Tensor]],
             masked: Sequence[tuple], fast: bool = True):
        """Fused CLS embeddings of several subsets and masked views of one token table.

        tokens: (B, L, E); padding: (B, L) bool (True = padding) or None.
        subsets: positions (list or 1-D tensor of indices into L; None = all) of each unmasked subset.
        masked: (positions or None, keep[, n_keep]) per masked job, keep a bool (V, B, L_S) over the subset's
            positions with the same number n_keep of kept positions in every row (what `random_keep_mask` gives).
        Returns ([(B, E) per subset], [(V, B, E) per masked job]).
        """
        if tokens.ndim != 3 or tokens.shape[-1] != self.width:
            raise ValueError(f"tokens must be (B, L, {self.width}), got shape {tuple(tokens.shape)}")
        if padding is not None and (padding.shape != tokens.shape[:2] or padding.dtype != torch.bool):
            raise ValueError(f"padding must be a bool tensor of shape {tuple(tokens.shape[:2])}")
        if padding is not None and not bool(padding.any()):
            padding = None
        if masked and self.mask_token is None:
            raise ValueError("masked views need a mask token: build the FusionTransformer with mask_token=True")
        jobs_pos = [(self._positions(p, tokens), p is None) for p in subsets]
        jobs_masked = []
        for job in masked:
            pos, keep = self._positions(job[0], tokens), job[1]
            if keep.ndim != 3 or keep.shape[1:] != (tokens.shape[0], pos.numel()) or keep.dtype != torch.bool:
                raise ValueError(f"keep must be bool (V, {tokens.shape[0]}, {pos.numel()}), got "
                                 f"{tuple(keep.shape)} {keep.dtype}")
            if len(job) > 2:     # kept count known to the caller: skip the (synchronising) check
                n_keep = int(job[2])
            else:
                counts = keep.sum(-1)
                n_keep = int(counts.reshape(-1)[0])
                if bool((counts != n_keep).any()):
                    raise ValueError("keep must keep the same number of positions in every view and sample")
            jobs_masked.append((pos, keep, n_keep))
        if fast:
            return self._fuse_fast(tokens, padding, jobs_pos, jobs_masked)
        return self._fuse_reference(tokens, padding, jobs_pos, jobs_masked)

    @staticmethod
    def _positions(pos, tokens) -> torch.Tensor:
        """Positions as a device tensor; validated on the host (lists) so the GPU is not synchronised, and cached
        per device: the subsets are the same every step, and a fresh host-to-device copy each step would wait."""
        L = tokens.shape[1]
        if pos is None:
            return torch.arange(L, device=tokens.device)
        if isinstance(pos, torch.Tensor):
            pos = pos.tolist()
        pos = tuple(int(p) for p in pos)
        if not pos or min(pos) < 0 or max(pos) >= L:
            raise ValueError(f"subset positions must be a non-empty list of indices into {L} tokens")
        return _constant_long(pos, tokens.device)

    # ------------------------------------------------------------------------------------- straightforward path
    def _run_reference(self, x: torch.Tensor, pad: Optional[torch.Tensor]) -> torch.Tensor:
        B = x.shape[0]
        x = torch.cat([self.cls_token.expand(B, 1, -1).to(x.dtype), x], dim=1)
        kpm = None
        if pad is not None:
            kpm = _bias_from_padding(torch.cat([pad.new_zeros(B, 1), pad], dim=1), x.dtype)
        for blk in self.resblocks:
            x = blk.forward_reference(x, kpm)
        return self.norm(x)[:, 0]

    def _fuse_reference(self, tokens, padding, subsets, masked):
        B = tokens.shape[0]
        outs = [self._run_reference(tokens[:, pos], None if padding is None else padding[:, pos])
                for pos, _ in subsets]
        mouts = []
        for pos, keep, _ in masked:
            V = keep.shape[0]
            x = tokens[:, pos].unsqueeze(0)
            x = torch.where(keep.unsqueeze(-1), x, self.mask_token.to(x.dtype))          # (V, B, L_S, E)
            pad = None if padding is None else padding[:, pos].unsqueeze(0).expand(V, -1, -1).reshape(V * B, -1)
            mouts.append(self._run_reference(x.reshape(V * B, pos.numel(), -1), pad).reshape(V, B, -1))
        return outs, mouts

    # ---------------------------------------------------------------------------------------------- fast path
    def _fuse_fast(self, tokens, padding, subsets, masked):
        B, L, E = tokens.shape
        dtype = tokens.dtype
        blk0 = self.resblocks[0]
        full_rows = self.n_layers > 1          # the first layer needs every row, not only CLS
        W, b = blk0.attn.in_proj_weight, blk0.attn.in_proj_bias
        sl = slice(0, 3 * E) if full_rows else slice(E, 3 * E)
        special = self.cls_token.reshape(1, E)
        if masked:
            special = torch.cat([special, self.mask_token.reshape(1, E)])
        special = special.to(dtype)
        special_proj = F.linear(blk0.ln_1(special), W[sl], b[sl])                    # (1 or 2, P)
        table = F.linear(blk0.ln_1(tokens), W[sl], b[sl])                           # (B, L, P)
        if full_rows:   # residual stream rows travel with their projections
            table = torch.cat([table, tokens], dim=-1)
            special_proj = torch.cat([special_proj, special], dim=-1)
        P = table.shape[-1]
        cls_row = special_proj[0]
        mask_row = special_proj[1] if masked else None

        jobs = []
        for pos, is_all in subsets:
            rows = table if is_all else table.index_select(1, pos)
            rows = torch.cat([cls_row.expand(B, 1, P), rows], dim=1)
            bias = None
            if padding is not None:
                bias = _bias_from_padding(torch.cat([padding.new_zeros(B, 1), padding[:, pos]], dim=1), dtype)
            jobs.append(_Job(rows, bias, 1))
        flat_table = table.reshape(B * L, P)
        for pos, keep, K in masked:
            V, _, LS = keep.shape
            # kept positions in ascending order: a stable sort puts the True entries first
            idx = torch.sort(keep.to(torch.int8), dim=-1, descending=True, stable=True).indices[..., :K]
            src = pos[idx]                                                           # (V, B, K) into L
            flat = src + (torch.arange(B, device=src.device) * L).view(1, B, 1)
            kept = flat_table.index_select(0, flat.reshape(-1)).reshape(V * B, K, P)
            parts = [cls_row.expand(V * B, 1, P), kept]
            n_masked = LS - K
            bias = None
            if padding is None:
                if n_masked > 0:
                    parts.append(mask_row.expand(V * B, 1, P))
                    bias = torch.zeros(V * B, K + 2, dtype=dtype, device=tokens.device)
                    bias[:, -1] = math.log(n_masked)
            else:
                pad_s = padding[:, pos].unsqueeze(0).expand(V, B, LS)
                kept_pad = torch.gather(pad_s, -1, idx).reshape(V * B, K)
                cols = [torch.zeros(V * B, 1, dtype=dtype, device=tokens.device), _bias_from_padding(kept_pad, dtype)]
                if n_masked > 0:
                    c = ((~keep) & (~pad_s)).sum(-1).reshape(V * B, 1).to(dtype)
                    parts.append(mask_row.expand(V * B, 1, P))
                    cols.append(torch.log(c))                                        # log 0 = -inf: excluded
                bias = torch.cat(cols, dim=1)
            jobs.append(_Job(torch.cat(parts, dim=1), bias, V))

        outputs = self._run_jobs(jobs, full_rows)
        z = list(outputs[: len(subsets)])
        zm = [o.reshape(job.views, B, E) for o, job in zip(outputs[len(subsets):], jobs[len(subsets):])]
        return z, zm

    def _run_jobs(self, jobs: list, full_rows: bool) -> list:
        """Run jobs grouped by sequence length (stacked on the batch axis); returns CLS outputs per job."""
        groups: dict = {}
        for i, job in enumerate(jobs):
            groups.setdefault(job.rows.shape[1], []).append(i)
        results = [None] * len(jobs)
        for idxs in groups.values():
            rows = torch.cat([jobs[i].rows for i in idxs]) if len(idxs) > 1 else jobs[idxs[0]].rows
            if all(jobs[i].bias is None for i in idxs):
                bias = None
            else:
                bias = torch.cat([jobs[i].bias if jobs[i].bias is not None else
                                  rows.new_zeros(jobs[i].rows.shape[:2]) for i in idxs])
            out = self._run_stacked(rows, bias, full_rows)
            for i, o in zip(idxs, out.split([jobs[i].rows.shape[0] for i in idxs])):
                results[i] = o
        return results

    def _attention(self, blk, q, k, v, bias):
        """q: (N, Lq, E), k/v: (N, S, E) already projected; returns out_proj(attention) (N, Lq, E)."""
        N, Lq, E = q.shape
        S, h = k.shape[1], self.n_heads
        d = E // h
        q = q.reshape(N, Lq, h, d).transpose(1, 2)
        k = k.reshape(N, S, h, d).transpose(1, 2)
        v = v.reshape(N, S, h, d).transpose(1, 2)
        mask = None if bias is None else bias.to(q.dtype)[:, None, None, :]
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return blk.attn.out_proj(a.transpose(1, 2).reshape(N, Lq, E))

    def _run_stacked(self, rows: torch.Tensor, bias: Optional[torch.Tensor], full_rows: bool) -> torch.Tensor:
        E = self.width
        blocks = self.resblocks
        if not full_rows:       # one layer: it is also the last, so only the CLS query is needed
            blk = blocks[0]
            k, v = rows[..., :E], rows[..., E:2 * E]
            cls = self.cls_token.reshape(1, 1, E).to(rows.dtype)
            q = F.linear(blk.ln_1(cls), blk.attn.in_proj_weight[:E], blk.attn.in_proj_bias[:E])
            x = cls + self._attention(blk, q.expand(rows.shape[0], 1, E), k, v, bias)
            x = x + blk.mlp(blk.ln_2(x))
            return self.norm(x[:, 0])
        # first layer from the gathered projections: [q | k | v | raw token]
        blk = blocks[0]
        q, k, v, x = rows[..., :E], rows[..., E:2 * E], rows[..., 2 * E:3 * E], rows[..., 3 * E:]
        x = x + self._attention(blk, q, k, v, bias)
        x = x + blk.mlp(blk.ln_2(x))
        for blk in blocks[1:-1]:
            qkv = F.linear(blk.ln_1(x), blk.attn.in_proj_weight, blk.attn.in_proj_bias)
            x = x + self._attention(blk, qkv[..., :E], qkv[..., E:2 * E], qkv[..., 2 * E:], bias)
            x = x + blk.mlp(blk.ln_2(x))
        blk = blocks[-1]
        h = blk.ln_1(x)
        W, b = blk.attn.in_proj_weight, blk.attn.in_proj_bias
        q = F.linear(h[:, :1], W[:E], b[:E])
        kv = F.linear(h, W[E:], b[E:])
        x = x[:, :1] + self._attention(blk, q, kv[..., :E], kv[..., E:], bias)
        x = x + blk.mlp(blk.ln_2(x))
        return self.norm(x[:, 0])


def _concat_tokens(tokens, padding):
    if isinstance(tokens, (list, tuple)):
        if padding is not None and any(p is not None for p in padding):
            padding = torch.cat([p if p is not None else torch.zeros(t.shape[:2], dtype=torch.bool, device=t.device)
                                 for t, p in zip(tokens, padding)], dim=1)
        else:
            padding = None
        tokens = torch.cat(list(tokens), dim=1)
    return tokens, padding


# --------------------------------------------------------------------------------------------------------------
# Multimodal encoder
# --------------------------------------------------------------------------------------------------------------
@dataclass
class FusionOutput:
    """z: n+1 unmasked embeddings (B, E) for subsets [{1}, ..., {n}, all]; masked: n+1 entries, (T, B, E) where
    masked views were computed (the full set, or every subset with mask_all_subsets), else None."""
    z: list
    masked: list


def has_batchnorm(module: nn.Module) -> bool:
    """BatchNorm normalises with the statistics of each call: such an encoder must see each copy in a call of its
    own, or training would change."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def batchable_copies(xs: Sequence) -> bool:
    """Several copies, all tensors of one shape but for the batch axis: one encoder call (of an encoder without
    BatchNorm) computes them all with the same result as one call each."""
    return len(xs) > 1 and all(isinstance(x, torch.Tensor) for x in xs) and len({tuple(x.shape[1:]) for x in xs}) == 1


class MultimodalEncoder(nn.Module):
    """Per-modality encoders and adapters, then the shared fusion transformer.

    Encoders and adapters run once per input copy; their tokens are reused for every subset and masked view.
    Copies passed together to `forward_copies` share one encoder call per modality when the encoder has no
    BatchNorm (BatchNorm statistics are per call, so those encoders keep one call per copy), and always share
    one fusion pass.
    """

    def __init__(self, encoders: Sequence[nn.Module], adapters: Sequence[nn.Module], embed_dim: int,
                 n_layers: int = 1, n_heads: int = 8, mask_ratio: float = 0.5, num_mask: int = 5,
                 keep_rounding: str = "truncate", mask_all_subsets: bool = False, fast_fusion: bool = True,
                 mask_padding: bool = True, mask_token: bool = True):
        super().__init__()
        if len(encoders) != len(adapters) or len(encoders) < 1:
            raise ValueError(f"need one adapter per encoder, got {len(encoders)} encoders, {len(adapters)} adapters")
        if num_mask < 1:
            raise ValueError(f"num_mask must be >= 1, got {num_mask}")
        if keep_rounding not in ROUNDINGS:
            raise ValueError(f"keep_rounding must be one of {ROUNDINGS}, got {keep_rounding!r}")
        self.encoders = nn.ModuleList(encoders)
        self.adapters = nn.ModuleList(adapters)
        self.fusion = FusionTransformer(embed_dim, n_layers, n_heads, mask_token=mask_token)
        self.n_modalities = len(encoders)
        self.mask_ratio = check_mask_ratio(mask_ratio)
        self.num_mask, self.keep_rounding = int(num_mask), keep_rounding
        self.mask_all_subsets, self.fast_fusion, self.mask_padding = mask_all_subsets, fast_fusion, mask_padding
        self._batch_copies = [not has_batchnorm(e) for e in encoders]

    # -------------------------------------------------------------------------------------------- tokenising
    def _tokenize_one(self, m: int, x):
        out = self.encoders[m](x)
        pad = None
        if isinstance(out, tuple):
            out, pad = out
        tokens = self.adapters[m](out)
        if pad is not None and pad.shape != tokens.shape[:2]:
            raise ValueError(f"modality {m}: padding mask {tuple(pad.shape)} does not match tokens "
                             f"{tuple(tokens.shape[:2])}")
        return tokens, (None if pad is None else pad.bool())

    def tokenize(self, copies: Sequence[Sequence]) -> tuple:
        """Tokens of every copy, stacked on the batch axis: ((C*B, L, E), padding (C*B, L) or None, lengths)."""
        n = self.n_modalities
        for c in copies:
            if len(c) != n:
                raise ValueError(f"x must hold {n} modalities, got {len(c)}")
        sizes = [len(c[0]) for c in copies]
        per_mod_tokens, per_mod_pad = [], []
        for m in range(n):
            xs = [c[m] for c in copies]
            if batchable_copies(xs) and self._batch_copies[m]:
                tok, pad = self._tokenize_one(m, torch.cat(xs))
            else:
                outs = [self._tokenize_one(m, x) for x in xs]
                if len({o[0].shape[1] for o in outs}) != 1:
                    raise ValueError(f"modality {m}: copies give different token counts")
                tok = torch.cat([o[0] for o in outs])
                pad = None
                if any(o[1] is not None for o in outs):
                    pad = torch.cat([o[1] if o[1] is not None else
                                     torch.zeros(o[0].shape[:2], dtype=torch.bool, device=o[0].device) for o in outs])
            if tok.shape[0] != sum(sizes):
                raise ValueError(f"modality {m}: batch size {tok.shape[0]} does not match the other modalities")
            per_mod_tokens.append(tok)
            per_mod_pad.append(pad)
        lengths = [t.shape[1] for t in per_mod_tokens]
        tokens, padding = _concat_tokens(per_mod_tokens, per_mod_pad)
        return tokens, padding, lengths, sizes

    # ----------------------------------------------------------------------------------------------- fusing
    def subsets(self) -> list:
        n = self.n_modalities
        return [[m] for m in range(n)] + [list(range(n))]

    def subset_positions(self, lengths: Sequence[int]) -> list:
        """Token positions of each subset in the concatenated table (None = all of them, the full set)."""
        offsets = [0]
        for length in lengths:
            offsets.append(offsets[-1] + length)
        return [None if len(s) == self.n_modalities else
                [p for m in s for p in range(offsets[m], offsets[m + 1])] for s in self.subsets()]

    def mask_jobs(self, tokens: torch.Tensor, lengths: Sequence[int], subset_pos: list, masked: bool,
                  generator: Optional[torch.Generator] = None, keep: Optional[list] = None) -> tuple[list, list]:
        """(masked subset ids, fusion jobs): fresh keep masks for the full set only (or every subset with
        `mask_all_subsets`), or the given `keep` masks."""
        n_sub = len(subset_pos)
        masked_ids = (list(range(n_sub)) if self.mask_all_subsets else [n_sub - 1]) if masked else []
        jobs = []
        for j, i in enumerate(masked_ids):
            sub_lengths = [lengths[m] for m in self.subsets()[i]]
            if keep is not None:
                jobs.append((subset_pos[i], keep[j]))
                continue
            k = random_keep_mask(self.num_mask, tokens.shape[0], sub_lengths, self.mask_ratio,
                                 self.keep_rounding, generator, tokens.device)
            n_keep = sum(keep_count(length, self.mask_ratio, self.keep_rounding) for length in sub_lengths)
            jobs.append((subset_pos[i], k, n_keep))
        return masked_ids, jobs

    @staticmethod
    def split_copies(z: list, zm: list, masked_ids: list, sizes: Sequence[int]) -> list:
        """Per-copy FusionOutputs from outputs computed on the copies stacked along the batch axis."""
        outs, start = [], 0
        for size in sizes:
            sl = slice(start, start + size)
            m_out = [None] * len(z)
            for i, t in zip(masked_ids, zm):
                m_out[i] = t[:, sl]
            outs.append(FusionOutput([t[sl] for t in z], m_out))
            start += size
        return outs

    def forward_copies(self, copies: Sequence[Sequence], masked: bool = True,
                       generator: Optional[torch.Generator] = None, keep: Optional[list] = None) -> list:
        """FusionOutput per copy (SSL path). `keep` optionally gives the keep masks (one bool (T, C*B, L_S) per
        masked subset, in subset order) instead of drawing them, for tests and the reference comparison."""
        tokens, padding, lengths, sizes = self.tokenize(copies)
        if not self.mask_padding:
            padding = None
        subset_pos = self.subset_positions(lengths)
        masked_ids, jobs = self.mask_jobs(tokens, lengths, subset_pos, masked, generator, keep)
        z, zm = self.fusion.fuse(tokens, padding, subset_pos, jobs, fast=self.fast_fusion)
        return self.split_copies(z, zm, masked_ids, sizes)

    def forward(self, x: Sequence, masked: bool = True, generator: Optional[torch.Generator] = None) -> FusionOutput:
        return self.forward_copies([x], masked=masked, generator=generator)[0]

    def embed(self, x: Sequence) -> torch.Tensor:
        """Probe representation: the full-set unmasked CLS embedding (B, E), padding honoured, no masked views."""
        tokens, padding, _, _ = self.tokenize([x])
        return self.fusion.fuse(tokens, padding, [None], [], fast=self.fast_fusion)[0][0]
