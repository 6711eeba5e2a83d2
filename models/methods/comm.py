"""CoMM: the fusion encoder without masked views, trained with the CoMM loss."""
from __future__ import annotations

import torch

from ..heads import ProjectionHead
from ..losses import comm_loss
from .base import BaseMethod
from .encoding import build_multimodal_encoder


class CoMM(BaseMethod):
    """The same fusion encoder and head without masked views, trained with the CoMM loss."""

    batch_inputs = ("views",)

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        m = self.hparams_model
        self.encoder = build_multimodal_encoder(m, mask_token=False, weights_dir=self.weights_dir)
        self.head = ProjectionHead(int(m["embed_dim"]), int(m["head_hidden"]), int(m["head_out"]))

    def compute_loss(self, batch: dict) -> dict:
        v1, v2 = batch["views"]
        outs = self.encoder.forward_copies([v1, v2], masked=False)
        blocks = outs[0].z + outs[1].z
        h = self.head(torch.cat(blocks), groups=len(blocks)).split(blocks[0].shape[0])
        n_sub = len(outs[0].z)
        m = self.hparams_model
        return comm_loss(list(h[:n_sub]), list(h[n_sub:]), float(m["temperature"]), weights=m["weights"])

    def features(self, x: list) -> torch.Tensor:
        return self.encoder.embed(x)
