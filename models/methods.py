"""One LightningModule per method and the registry.

Every method takes the resolved config as a plain nested dict (`cfg`, see contract.md), builds its modules from
`cfg["model"]`, and trains on SSL batches {"views": [v1, v2], "x": x} (lists of n modality tensors).
`features(x)` is the probe representation on un-augmented inputs.

Baselines built on per-modality encoders (Cross, Cross+Self, CMC) pool encoder outputs to one vector per sample:
CNN maps (B, C, H, W) by global average pooling, token sequences (B, L, D) by the mean over non-padding tokens,
vectors as they are. The reference flattens instead; for AlexNet that is 9216 values per image, for padded
sequences a batch-dependent size, so pooling is the deliberate choice here.
"""
from __future__ import annotations

import copy
import math
from itertools import combinations
from typing import Optional

import pytorch_lightning as pl
import torch
from torch import nn

from .adapters import build_adapter
from .encoders import build_encoder
from .fusion import MultimodalEncoder
from .heads import ProjectionHead
from .losses import clip_loss, cmc_loss, comm_loss, cross_self_loss, infmasking_loss, mask_ratio_schedule


class NonFiniteLossError(RuntimeError):
    """The training loss is NaN or infinite (the reference stops training); the pipeline catches this."""


MODEL_DEFAULTS = {
    "embed_dim": 512, "n_layers": 1, "n_heads": 8,
    "mask_ratio": 0.7, "num_mask": 6, "temperature": 0.1, "mask_lambda": 1.0,
    "weights": None, "cross": False, "penalty": None, "only_mask_last": False,
    "keep_rounding": "truncate", "mask_all_subsets": False, "fast_fusion": True, "mask_padding": True,
    "head_hidden": 512, "head_out": 256,
    "cross_proj_dim": 256, "ssl_scale": 1.0, "logit_scale_init": math.log(1 / 0.07),
    "cross_self_hidden": 1024, "channels_last": False,
    "modalities": [],
}
OPTIM_DEFAULTS = {"lr": 3e-4, "weight_decay": 1e-4, "scheduler": "none", "warmup_epochs": 10,
                  "warmup_start_lr": 1e-6, "min_lr": 1e-6}
LOGIT_SCALE_MAX = 4.6052   # log(100)


def _resolve(cfg: dict) -> tuple:
    if not isinstance(cfg, dict):
        raise ValueError(f"cfg must be a plain dict, got {type(cfg).__name__}")
    model = {**MODEL_DEFAULTS, **(cfg.get("model") or {})}
    optim = {**OPTIM_DEFAULTS, **(cfg.get("optim") or {})}
    mods = model["modalities"]
    if not isinstance(mods, (list, tuple)) or len(mods) < 2:
        raise ValueError(f"cfg['model']['modalities'] must list at least 2 modalities, got {mods!r}")
    for i, m in enumerate(mods):
        if not isinstance(m, dict) or "encoder" not in m:
            raise ValueError(f"cfg['model']['modalities'][{i}] must be a dict with an 'encoder' key, got {m!r}")
    if optim["scheduler"] not in ("none", "warmup_cosine", None):
        raise ValueError(f"cfg['optim']['scheduler'] must be 'none' or 'warmup_cosine', got {optim['scheduler']!r}")
    return model, optim


def build_encoders(model: dict) -> list:
    return [build_encoder(m["encoder"], channels_last=bool(model.get("channels_last", False)),
                          **(m.get("encoder_kwargs") or {})) for m in model["modalities"]]


def build_multimodal_encoder(model: dict, mask_token: bool = True) -> MultimodalEncoder:
    """Encoders + adapters + fusion transformer from `cfg["model"]` (defaults filled in)."""
    E = int(model["embed_dim"])
    adapters = [build_adapter(m.get("adapter", "none"), E, **(m.get("adapter_kwargs") or {}))
                for m in model["modalities"]]
    return MultimodalEncoder(build_encoders(model), adapters, E, n_layers=int(model["n_layers"]),
                             n_heads=int(model["n_heads"]), mask_ratio=float(model["mask_ratio"]),
                             num_mask=int(model["num_mask"]), keep_rounding=model["keep_rounding"],
                             mask_all_subsets=bool(model["mask_all_subsets"]),
                             fast_fusion=bool(model["fast_fusion"]), mask_padding=bool(model["mask_padding"]),
                             mask_token=mask_token)


def pool_features(out) -> torch.Tensor:
    """One vector per sample from an encoder output (see module docstring)."""
    pad = None
    if isinstance(out, tuple):
        out, pad = out
    if out.ndim == 4:
        return out.mean(dim=(2, 3))
    if out.ndim == 3:
        if pad is None:
            return out.mean(dim=1)
        keep = (~pad.bool()).unsqueeze(-1).to(out.dtype)
        return (out * keep).sum(1) / keep.sum(1).clamp(min=1)
    if out.ndim == 2:
        return out
    return out.reshape(len(out), -1)


def _has_batchnorm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def encode_copies(encoder: nn.Module, xs: list) -> list:
    """encoder(x) for each x, in one call when that changes nothing (no BatchNorm, equal shapes)."""
    same = all(isinstance(x, torch.Tensor) for x in xs) and len({tuple(x.shape[1:]) for x in xs}) == 1
    if len(xs) > 1 and same and not _has_batchnorm(encoder):
        out = encoder(torch.cat(xs))
        sizes = [len(x) for x in xs]
        if isinstance(out, tuple):
            return list(zip(out[0].split(sizes), out[1].split(sizes)))
        return list(out.split(sizes))
    return [encoder(x) for x in xs]


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


class InfMasking(BaseMethod):
    """Fusion encoder + projection head, trained with the InfMasking loss."""

    batch_inputs = ("views",)

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        m = self.hparams_model
        self.encoder = build_multimodal_encoder(m)
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


class CoMM(BaseMethod):
    """The same fusion encoder and head without masked views, trained with the CoMM loss."""

    batch_inputs = ("views",)

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        m = self.hparams_model
        self.encoder = build_multimodal_encoder(m, mask_token=False)
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


def _encoder_dims(encoders: list, modalities: list) -> list:
    dims = []
    for i, e in enumerate(encoders):
        d = getattr(e, "out_dim", None)
        if not d:
            raise ValueError(f"cfg['model']['modalities'][{i}]: encoder {modalities[i]['encoder']!r} has no known "
                             f"output size; give encoder_kwargs.dim")
        dims.append(int(d))
    return dims


class _PerModality(BaseMethod):
    """Baselines with one encoder per modality and no fusion."""

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        m = self.hparams_model
        self.encoders = nn.ModuleList(build_encoders(m))
        self.dims = _encoder_dims(list(self.encoders), m["modalities"])

    def _check_x(self, x: list):
        if len(x) != len(self.encoders):
            raise ValueError(f"x must hold {len(self.encoders)} modalities, got {len(x)}")

    def pooled(self, x: list) -> list:
        self._check_x(x)
        return [pool_features(enc(xi)) for enc, xi in zip(self.encoders, x)]

    def features(self, x: list) -> torch.Tensor:
        return torch.cat(self.pooled(x), dim=-1)


class Cross(_PerModality):
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
        self.logit_scale = nn.Parameter(torch.tensor(float(m["logit_scale_init"])))

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


class CrossSelf(_PerModality):
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


class CMC(_PerModality):
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


METHODS: dict = {
    "infmasking": InfMasking,
    "comm": CoMM,
    "cross": Cross,
    "cross_self": CrossSelf,
    "cmc": CMC,
}


def build_method(cfg: dict) -> pl.LightningModule:
    """The LightningModule named by cfg["method"]."""
    if not isinstance(cfg, dict):
        raise ValueError(f"cfg must be a plain dict, got {type(cfg).__name__}")
    name = cfg.get("method")
    if name not in METHODS:
        raise ValueError(f"cfg['method'] must be one of {sorted(METHODS)}, got {name!r}")
    return METHODS[name](cfg)
