"""One LightningModule per method, one module each; the names, display names and knobs are in the method registry
(models/method_registry.py, torch-free), which this package reads to build a method by name.

`from infmask.models.methods import InfMasking, build_method, METHODS, ...` is the public surface; `METHODS` maps
each registered name to its class (imported here, so this package imports torch).
"""
from __future__ import annotations

import pytorch_lightning as pl

from ..method_registry import METHOD_NAMES, method_class
from .base import (MODEL_DEFAULTS, OPTIM_DEFAULTS, BaseMethod, NonFiniteLossError, PerModalityMethod,
                   parameter_groups, warmup_cosine_lr)
from .cmc import CMC
from .comm import CoMM
from .cross import LOGIT_SCALE_MAX, Cross
from .cross_self import CrossSelf
from .encoding import build_encoders, build_multimodal_encoder, encode_copies, pool_features
from .infmasking import InfMasking

METHODS: dict = {name: method_class(name) for name in METHOD_NAMES}


def build_method(cfg: dict) -> pl.LightningModule:
    """The LightningModule named by cfg["method"]."""
    if not isinstance(cfg, dict):
        raise ValueError(f"cfg must be a plain dict, got {type(cfg).__name__}")
    return method_class(cfg.get("method"))(cfg)   # through the registry: unknown names get its message


__all__ = ["BaseMethod", "CMC", "CoMM", "Cross", "CrossSelf", "InfMasking", "LOGIT_SCALE_MAX", "METHODS",
           "MODEL_DEFAULTS", "NonFiniteLossError", "OPTIM_DEFAULTS", "PerModalityMethod", "build_encoders",
           "build_method", "build_multimodal_encoder", "encode_copies", "parameter_groups", "pool_features",
           "warmup_cosine_lr"]
