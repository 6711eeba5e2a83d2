"""Cross+Self: cross-modal InfoNCE plus per-modality SimCLR (knobs: CrossSelfParams)."""
from __future__ import annotations

import torch
from torch import nn

from ..heads import ProjectionHead
from ..losses import cross_self_loss
from .base import PerModalityMethod
from .encoding import encode_copies, pool_features


class CrossSelf(PerModalityMethod):
    """Cross-modal InfoNCE on un-augmented inputs plus per-modality SimCLR on the two views; heads are
    3-layer BN MLPs in -> 1024 -> 1024 -> 256. Probe features: the pooled encoder outputs, concatenated."""

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        m = self.hparams_model
        self.heads = nn.ModuleList([ProjectionHead(d, int(m["cross_self_hidden"]), int(m["head_out"]))
                                    for d in self.dims])

    def compute_loss(self, batch: dict) -> dict:
        x = batch["x"]
        v1, v2 = batch["views"]
        self._check_x(x)
        xe, e1, e2 = [], [], []
        for m, (enc, head) in enumerate(zip(self.encoders, self.heads)):
            feats = [pool_features(o) for o in encode_copies(enc, [x[m], v1[m], v2[m]])]
            h = head(torch.cat(feats), groups=3).split(len(feats[0]))
            xe.append(h[0])
            e1.append(h[1])
            e2.append(h[2])
        mc = self.hparams_model
        return cross_self_loss(xe, e1, e2, float(mc["temperature"]), float(mc["ssl_scale"]))
