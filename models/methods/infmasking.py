"""InfMasking: the fusion encoder with random masked views, trained with the InfMasking loss."""
from __future__ import annotations

from typing import Optional

import torch

from ..heads import ProjectionHead
from ..losses import infmasking_loss
from .base import BaseMethod
from .encoding import build_multimodal_encoder


class InfMasking(BaseMethod):
    """Fusion encoder + projection head, trained with the InfMasking loss."""

    batch_inputs = ("views",)

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        m = self.hparams_model
        self.encoder = build_multimodal_encoder(m, weights_dir=self.weights_dir)
        self.head = ProjectionHead(int(m["embed_dim"]), int(m["head_hidden"]), int(m["head_out"]))

    def project(self, outs: list):
        """Head on every fused embedding, as the reference calls it: unmasked subsets of each copy, then the
        masked views of each subset (copy 1, copy 2), each (B, E) block normalised with its own statistics."""
        blocks = [z for o in outs for z in o.z]
        n_sub = len(outs[0].z)
        for i in range(n_sub):
            for o in outs:
                if o.masked[i] is not None:
                    blocks.extend(o.masked[i].unbind(0))
        B = blocks[0].shape[0]
        h = self.head(torch.cat(blocks), groups=len(blocks)).split(B)
        pos = 0
        z = []
        for o in outs:
            z.append(list(h[pos:pos + n_sub]))
            pos += n_sub
        masked = [[None] * n_sub for _ in outs]
        for i in range(n_sub):
            for c, o in enumerate(outs):
                if o.masked[i] is not None:
                    T = o.masked[i].shape[0]
                    masked[c][i] = torch.stack(h[pos:pos + T])
                    pos += T
        return z, masked

    def compute_loss(self, batch: dict, keep: Optional[list] = None) -> dict:
        """`keep` optionally fixes the keep masks (see MultimodalEncoder.forward_copies; rows: copy 1 then 2)."""
        v1, v2 = batch["views"]
        outs = self.encoder.forward_copies([v1, v2], masked=True, keep=keep)
        (z1, z2), (m1, m2) = self.project(outs)
        m = self.hparams_model
        r = self.mask_ratio_r()
        out = infmasking_loss(z1, z2, m1[-1], m2[-1], float(m["temperature"]), r, weights=m["weights"],
                              cross=bool(m["cross"]), penalty=m["penalty"], only_mask_last=bool(m["only_mask_last"]))
        out["mask_ratio_r"] = float(r)
        return out

    def features(self, x: list) -> torch.Tensor:
        return self.encoder.embed(x)
