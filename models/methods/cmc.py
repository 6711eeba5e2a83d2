"""CMC: Contrastive Multiview Coding between per-modality encoders (knobs: ProjectionParams)."""
from __future__ import annotations

from torch import nn

from ..losses import cmc_loss
from .base import PerModalityMethod


class CMC(PerModalityMethod):
    """Contrastive Multiview Coding: bias-free linear heads, NT-Xent averaged over all modality pairs,
    on un-augmented inputs. Probe features: the pooled encoder outputs, concatenated."""

    batch_inputs = ("x",)

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        m = self.hparams_model
        self.heads = nn.ModuleList([nn.Linear(d, int(m["cross_proj_dim"]), bias=False) for d in self.dims])

    def compute_loss(self, batch: dict) -> dict:
        zs = [h(f) for h, f in zip(self.heads, self.pooled(batch["x"]))]
        return cmc_loss(zs, float(self.hparams_model["temperature"]))
