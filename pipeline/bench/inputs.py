"""What a bench step runs on: the device, the precision, and the batch (synthetic or the real loader's first)."""
from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path

from ..errors import UsageError


def device_for(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device: unknown device {name!r}; use auto, cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available")
    return dev


def precision_for(cfg, device) -> str:
    import torch

    p = cfg.trainer.precision
    if p == "auto":
        return "bf16-mixed" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "32-true"
    if p == "32":
        return "32-true"
    if p not in ("32-true", "bf16-mixed", "16-mixed", "64-true"):
        raise UsageError(f"trainer.precision={p!r} is not supported by bench; use auto, 32-true, bf16-mixed, "
                         f"16-mixed or 64-true")
    return p


def autocast_for(precision: str, device):
    """A factory of the autocast context the precision asks for (a fresh context per step)."""
    import torch

    if precision == "bf16-mixed":
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision == "16-mixed":
        return lambda: torch.autocast(device_type=device.type, dtype=torch.float16)
    return nullcontext


def batch_inputs(cfg) -> tuple:
    """What the method's training step reads from an SSL batch (the real training loop makes only that)."""
    from infmask.models.methods import METHODS

    return METHODS[cfg.method].batch_inputs


def random_inputs(model_cfg: dict, batch_size: int, image_size: int = 224, seq_len: int = 50,
                  device: str = "cpu", generator=None) -> list:
    """Random inputs of the right shapes for the encoders of `model_cfg["modalities"]` (timing only)."""
    import torch

    xs = []
    for i, m in enumerate(model_cfg["modalities"]):
        kw = m.get("encoder_kwargs") or {}
        enc = m["encoder"]
        shape = {"alexnet": (3, image_size, image_size), "resnet18": (3, 128, 128),
                 "affect_transformer": (seq_len, kw.get("n_features", 0)), "mlp": (kw.get("in_dim", 0),),
                 "gru": (24, kw.get("in_dim", 0)), "force": (32, 6), "proprio": (8,)}.get(enc)
        if shape is None:
            raise ValueError(f"modalities[{i}]: no random input for encoder {enc!r}")
        xs.append(torch.randn(batch_size, *shape, generator=generator).to(device))
    return xs


class Batches:
    """Raw batch on the host and the transform that makes an SSL batch of it on the device."""

    def __init__(self, cfg, device, real: bool, root=None):
        import torch

        self.device = device
        self.dtype = torch.float64 if cfg.trainer.precision == "64-true" else None
        B = cfg.data.batch_size
        g = torch.Generator().manual_seed(cfg.seed)
        if real:
            from ..stages.data_stages import datamodule_for, ensure_data
            from ..workspace import Workspace

            ws = Workspace.open(root)
            ensure_data(cfg, ws)
            dm = datamodule_for(cfg, ws)
            dm.ssl_inputs = batch_inputs(cfg)
            dm.setup("fit")
            self.raw = next(iter(dm.train_dataloader()))
            self.transform = dm.transform_batch
            self.source = f"first batch of the {cfg.data.dataset} training loader"
        elif cfg.data.dataset == "trifeatures":
            from infmask.data.trifeatures_datamodule import TrifeaturesDataModule

            S = cfg.data.image_size
            # the config's augmentation, as training applies it (crop scale, blur range)
            dm = TrifeaturesDataModule(Path(os.devnull), batch_size=B, image_size=S, check_integrity=False,
                                       crop_scale=tuple(cfg.data.crop_scale), blur_sigma=tuple(cfg.data.blur_sigma))
            dm.ssl_inputs = batch_inputs(cfg)
            n = len(cfg.model.modalities)
            self.raw = {"raw": [torch.randint(0, 256, (B, S, S, 3), dtype=torch.uint8, generator=g)
                                for _ in range(n)]}
            self.transform = dm.transform_batch
            self.source = f"synthetic uint8 images {B}x{S}x{S}x3, augmented on the device"
        else:
            x = random_inputs(cfg.to_dict()["model"], B, image_size=cfg.data.image_size, generator=g)
            self.raw = {"x": x, "views": [[t + 0.1 * torch.randn(t.shape, generator=g) for t in x]
                                          for _ in range(2)]}
            self.transform = lambda b: b
            self.source = ("synthetic float model inputs (no augmentation measured; --data runs the real "
                           "loader and augmentation)")

    @property
    def raw_bytes(self) -> int:
        import torch

        def size(obj):
            if isinstance(obj, torch.Tensor):
                return obj.numel() * obj.element_size()
            if isinstance(obj, dict):
                return sum(size(v) for v in obj.values())
            if isinstance(obj, (list, tuple)):
                return sum(size(v) for v in obj)
            return 0
        return size(self.raw)

    def make(self) -> dict:
        """Copy the raw batch to the device and transform it (augmentation for SSL batches)."""
        import torch

        def move(obj):
            if isinstance(obj, torch.Tensor):
                return obj.to(self.device, non_blocking=True)
            if isinstance(obj, dict):
                return {k: move(v) for k, v in obj.items()}
            if isinstance(obj, (list, tuple)):
                return type(obj)(move(v) for v in obj)
            return obj
        batch = self.transform(move(self.raw))
        if self.dtype is not None:
            batch = {k: [[t.to(self.dtype) for t in v] for v in vs] if k == "views" else [t.to(self.dtype) for t in vs]
                     for k, vs in batch.items()}
        return batch
