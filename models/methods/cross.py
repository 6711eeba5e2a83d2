"""Cross: CLIP-style cross-modal InfoNCE between per-modality encoders (knobs: ProjectionParams)."""
from __future__ import annotations

import math
from itertools import combinations

import torch
from torch import nn

from ..losses import clip_loss
from .base import PerModalityMethod

LOGIT_SCALE_INIT = math.log(1 / 0.07)   # CLIP's; a plain cfg dict may set model.logit_scale_init
LOGIT_SCALE_MAX = 4.6052                # log(100)


class Cross(PerModalityMethod):
    """CLIP-style cross-modal InfoNCE: bias-free linear projections of the pooled encoder outputs and a
    learnable logit scale, init log(1/0.07), clamped to [0, log 100] after every step. More than two modalities:
    the mean of the CLIP loss over all pairs."""

    batch_inputs = ("x",)

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        m = self.hparams_model
        self.projections = nn.ModuleList([nn.Linear(d, int(m["cross_proj_dim"]), bias=False) for d in self.dims])
        for p, d in zip(self.projections, self.dims):
            nn.init.normal_(p.weight, std=d ** -0.5)
        self.logit_scale = nn.Parameter(torch.tensor(float(m.get("logit_scale_init", LOGIT_SCALE_INIT))))

    def embed(self, x: list) -> list:
        return [p(f) for p, f in zip(self.projections, self.pooled(x))]

    def compute_loss(self, batch: dict) -> dict:
        e = self.embed(batch["x"])
        scale = self.logit_scale.exp()
        pairs = list(combinations(range(len(e)), 2))
        parts = [clip_loss(e[i], e[j], scale) for i, j in pairs]
        out = {"loss": torch.stack([p["loss"] for p in parts]).mean(),
               "ssl_acc": torch.stack([p["ssl_acc"] for p in parts]).mean(),
               "logit_scale": scale.detach()}
        if len(pairs) > 1:
            for (i, j), p in zip(pairs, parts):
                out[f"ssl_loss_{i}_{j}"], out[f"ssl_acc_{i}_{j}"] = p["loss"], p["ssl_acc"]
        return out

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.clamp_logit_scale()

    @torch.no_grad()
    def clamp_logit_scale(self):
        self.logit_scale.clamp_(0, LOGIT_SCALE_MAX)

    def features(self, x: list) -> torch.Tensor:
        return torch.cat(self.embed(x), dim=-1)
