"""Third-party notices that say nothing to an infmask user, stopped where they start. Warnings stay on.

- Lightning's trainer logger prints info lines on every fit: device availability (our own first lines name the
  device), a tip advertising another logger, "`Trainer.fit` stopped". Its level goes to WARNING, which keeps every
  warning. (`limit_*_batches=1.0` notices are avoided at the call: pretrain passes those keys only when set.)
  Fabric's logger keeps its info lines: they appear only under DDP (`Initializing distributed: GLOBAL_RANK: 1,
  MEMBER: 2/2`, one per rank), where they say which ranks joined.
- Lightning 2.6 builds its data-loader tree with torch's deprecated `LeafSpec()` constructor, and torch 2.13 warns
  about that on every fit: the constructor is swapped for torch's own replacement, `treespec_leaf()`, which returns
  the same kind of object without the deprecation.
- W&B's "anonymous setting has no effect" comes from a key Lightning's WandbLogger always passes: our logger
  subclass drops it (pipeline/wandb_logger.py).
"""
from __future__ import annotations

import logging

LIGHTNING_LOGGERS = ("lightning.pytorch", "pytorch_lightning")


def quiet_third_party() -> None:
    for name in LIGHTNING_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    _lightning_leafspec()


def _lightning_leafspec() -> None:
    import torch.utils._pytree as torch_pytree

    try:
        from pytorch_lightning.utilities import _pytree as pl_pytree
    except ImportError:  # another Lightning layout: nothing to swap
        return
    leaf = getattr(torch_pytree, "treespec_leaf", None)
    if leaf is not None and getattr(pl_pytree, "LeafSpec", None) is getattr(torch_pytree, "LeafSpec", None):
        pl_pytree.LeafSpec = leaf
