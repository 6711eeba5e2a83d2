"""What every method shares: the LightningModule plumbing (`BaseMethod`) and the base of the baselines with one
encoder per modality and no fusion (`PerModalityMethod`).

Every method takes the resolved config as a plain nested dict (`cfg`, `Config.to_dict()`), builds its modules from
`cfg["model"]` (defaults: models/method_registry.py), and trains on SSL batches {"views": [v1, v2], "x": x} (lists
of n modality tensors). `features(x)` is the probe representation on un-augmented inputs.
"""
from __future__ import annotations

import copy
import math
from typing import Optional

import pytorch_lightning as pl
import torch
from torch import nn

from ..losses import mask_ratio_schedule
from ..method_registry import model_defaults, optim_defaults
from .encoding import build_encoders, encoder_dims, pool_features


class NonFiniteLossError(RuntimeError):
    """The training loss is NaN or infinite (the reference stops training); the pipeline catches this."""


# Every default, shared and method-specific, as declared in the method registry.
MODEL_DEFAULTS = model_defaults()
OPTIM_DEFAULTS = optim_defaults()


def _resolve(cfg: dict) -> tuple:
    if not isinstance(cfg, dict):
        raise ValueError(f"cfg must be a plain dict, got {type(cfg).__name__}")
    model = {**model_defaults(), **(cfg.get("model") or {})}
    optim = {**optim_defaults(), **(cfg.get("optim") or {})}
    mods = model["modalities"]
    if not isinstance(mods, (list, tuple)) or len(mods) < 2:
        raise ValueError(f"cfg['model']['modalities'] must list at least 2 modalities, got {mods!r}")
    for i, m in enumerate(mods):
        if not isinstance(m, dict) or "encoder" not in m:
            raise ValueError(f"cfg['model']['modalities'][{i}] must be a dict with an 'encoder' key, got {m!r}")
    if optim["scheduler"] not in ("none", "warmup_cosine", None):
        raise ValueError(f"cfg['optim']['scheduler'] must be 'none' or 'warmup_cosine', got {optim['scheduler']!r}")
    return model, optim


def parameter_groups(module: nn.Module, weight_decay: float) -> list:
    """the reference: weight decay on trainable parameters with ndim >= 2 whose name holds none of bias/ln/bn."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "bias" in name or "ln" in name or "bn" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine_lr(epoch: int, base_lr: float, warmup_epochs: int, max_epochs: int, start_lr: float,
                     min_lr: float) -> float:
    """the reference: linear warm-up from start_lr over `warmup_epochs` epochs, then cosine to min_lr."""
    if epoch < warmup_epochs:
        return start_lr + epoch * (base_lr - start_lr) / max(1, warmup_epochs - 1)
    span = max(1, max_epochs - warmup_epochs)
    return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * (epoch - warmup_epochs) / span))


class BaseMethod(pl.LightningModule):
    """Shared plumbing: config, optimiser groups, schedule, logging, the non-finite check, checkpoint config."""

    # The parts of an SSL batch that `compute_loss` reads: "views" (two augmented copies), "x" (un-augmented).
    batch_inputs: tuple[str, ...] = ("views", "x")
    # The non-finite check read on the host every step (True) or every log_every_n_steps steps (False);
    # None: every step on a CPU only (see _check_finite).
    finite_check_every_step: Optional[bool] = None

    def __init__(self, cfg: dict):
        super().__init__()
        self.hparams_model, self.hparams_optim = _resolve(cfg)
        self.cfg = copy.deepcopy(cfg)
        # where encoders with pretrained weights (the frozen CLIP towers) look for them: the config's data.weights_dir
        self.weights_dir = (cfg.get("data") or {}).get("weights_dir")

    # ------------------------------------------------------------------------------------------ to implement
    def compute_loss(self, batch: dict) -> dict:
        raise NotImplementedError

    def features(self, x: list) -> torch.Tensor:
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------------ steps
    @staticmethod
    def _batch_size(batch: dict) -> int:
        x = batch["x"] if "x" in batch else batch["views"][0]
        return len(x[0])

    def _log_all(self, out: dict, prefix: str, batch: dict, train: bool, batch_idx: int = 0):
        if self._trainer is None:
            return
        bs = self._batch_size(batch)
        if train and not self._log_step(batch_idx):
            # Lightning's `log` costs about 0.7 ms of host time per key, and the logger only writes on its steps:
            # between them the loss alone (progress lines, the epoch summary read it).
            out = {"loss": out["loss"]}
        for k, v in out.items():
            # Not prog_bar for per-step values: Lightning turns progress-bar values into Python numbers after
            # every batch, a host-device sync per step (the progress bar reads train/loss itself, throttled).
            self.log(f"{prefix}/{k}", v.detach() if isinstance(v, torch.Tensor) else v, batch_size=bs,
                     on_step=train, on_epoch=not train, sync_dist=not train, prog_bar=(k == "loss" and not train))

    def training_step(self, batch: dict, batch_idx: int):
        out = self.compute_loss(batch)
        loss = out["loss"]
        self._check_finite(loss, batch_idx)
        self._log_all(out, "train", batch, train=True, batch_idx=batch_idx)
        return loss

    def _log_step(self, batch_idx: int) -> bool:
        """Whether the logger writes this training step (Lightning's rule: the step count + 1 is a multiple of
        log_every_n_steps), or it is the epoch's last batch (the epoch summaries read the values logged last)."""
        t = self._trainer
        if t is None:
            return True
        every = max(1, int(getattr(t, "log_every_n_steps", 1) or 1))
        return (t.global_step + 1) % every == 0 or batch_idx + 1 >= getattr(t, "num_training_batches", float("inf"))

    def _check_finite(self, loss: torch.Tensor, batch_idx: int) -> None:
        """Raise NonFiniteLossError on a NaN or infinite training loss. On a CPU every step, before its update.
        On an accelerator reading the flag is a host-device sync that keeps the host from queueing the next step,
        so the flags accumulate on the device and are read every `log_every_n_steps` steps (when the telemetry
        synchronises anyway) and at each epoch's last batch: the error comes up to that many steps late."""
        finite = torch.isfinite(loss.detach()).all()
        t = self._trainer
        every_step = self.finite_check_every_step
        if every_step is None:
            every_step = loss.device.type == "cpu"
        if not every_step and t is not None:
            pending = getattr(self, "_finite_pending", None)
            if pending is None:
                self._finite_pending, self._finite_since = finite, batch_idx
            else:
                self._finite_pending = pending & finite
            if not self._log_step(batch_idx):
                return
            finite, first = self._finite_pending, self._finite_since
            self._finite_pending = None
            if not bool(finite):
                raise NonFiniteLossError(f"training loss became non-finite at epoch {self.current_epoch}, between "
                                         f"batch {first} and batch {batch_idx}")
            return
        if not bool(finite):
            raise NonFiniteLossError(f"training loss is {loss.item()} at epoch {self.current_epoch}, "
                                     f"batch {batch_idx}")

    def validation_step(self, batch: dict, batch_idx: int):
        out = self.compute_loss(batch)
        self._log_all(out, "val", batch, train=False)
        return out["loss"]

    # --------------------------------------------------------------------------------------------- optimiser
    def _max_epochs(self) -> Optional[int]:
        if self._trainer is not None and self._trainer.max_epochs and self._trainer.max_epochs > 0:
            return int(self._trainer.max_epochs)
        m = (self.cfg.get("trainer") or {}).get("max_epochs")
        return int(m) if m else None

    def configure_optimizers(self):
        o = self.hparams_optim
        opt = torch.optim.AdamW(parameter_groups(self, float(o["weight_decay"])), lr=float(o["lr"]))
        if o["scheduler"] in (None, "none"):
            return opt
        max_epochs = self._max_epochs()
        if not max_epochs:
            raise ValueError("optim.scheduler='warmup_cosine' needs trainer.max_epochs > 0")
        base = float(o["lr"])

        def factor(epoch: int) -> float:
            return warmup_cosine_lr(epoch, base, int(o["warmup_epochs"]), max_epochs, float(o["warmup_start_lr"]),
                                    float(o["min_lr"])) / base

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["infmask_config"] = copy.deepcopy(self.cfg)

    def compile_encoders(self, **kwargs) -> int:
        """`trainer.compile`: torch.compile each modality encoder in place and return how many.

        Compiling the LightningModule itself would do nothing here, since the training step never calls its
        `forward`. `nn.Module.compile` keeps the parameter names, so checkpoints load without it. The fusion's
        masked passes change shape with the subset and stay eager.
        """
        holder = getattr(self, "encoder", None)
        encoders = getattr(holder, "encoders", None) if holder is not None else getattr(self, "encoders", None)
        for enc in encoders or ():
            enc.compile(**kwargs)
        return len(encoders or ())

    # ---------------------------------------------------------------------------------------------- schedule
    def mask_ratio_r(self) -> float:
        """r = lambda (e+1)/E_max from the trainer's state; lambda when no trainer (or no epoch limit) is set."""
        lam = float(self.hparams_model["mask_lambda"])
        trainer = self._trainer
        if trainer is None or not trainer.max_epochs or trainer.max_epochs <= 0:
            return lam
        return mask_ratio_schedule(lam, trainer.current_epoch, trainer.max_epochs)


class PerModalityMethod(BaseMethod):
    """Baselines with one encoder per modality and no fusion."""

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        m = self.hparams_model
        self.encoders = nn.ModuleList(build_encoders(m, self.weights_dir))
        self.dims = encoder_dims(list(self.encoders), m["modalities"])

    def _check_x(self, x: list):
        if len(x) != len(self.encoders):
            raise ValueError(f"x must hold {len(self.encoders)} modalities, got {len(x)}")

    def pooled(self, x: list) -> list:
        self._check_x(x)
        return [pool_features(enc(xi)) for enc, xi in zip(self.encoders, x)]

    def features(self, x: list) -> torch.Tensor:
        return torch.cat(self.pooled(x), dim=-1)
