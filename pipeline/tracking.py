"""W&B setup (offline by default, WANDB_MODE respected) and the training telemetry callback.

Rules learned the hard way (ENVIRONMENT.md §2, ANCHORS.md B5):
- never pass `mode=`/`offline=` to wandb or WandbLogger: an explicit flag overrides WANDB_MODE=disabled;
  the CLI sets WANDB_MODE=offline in the environment when the user did not choose;
- no artifacts in offline runs; the results store and metrics.jsonl are the source of truth;
- the resolved config is logged once (no save_hyperparameters into the logger);
- secrets never enter a config: configs hold no credentials, and we strip any key that looks like one.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from functools import lru_cache
from pathlib import Path

import pytorch_lightning as pl

SECRET_MARKERS = ("api_key", "apikey", "token", "secret", "password")

SUMMARIES = {  # best-so-far summaries, declared explicitly
    "acc1": "max", "acc": "max", "roc_auc": "max", "f1_mean": "max", "f1_weighted": "max", "acc1_subset": "max",
    "r2": "max", "pearson_r": "max", "mse": "min", "loss": "min",
}


def wandb_mode() -> str:
    return os.environ.get("WANDB_MODE", "offline")


def wandb_enabled() -> bool:
    return wandb_mode() != "disabled"


@lru_cache(maxsize=1)
def code_version() -> str:
    """git describe of the checkout when available, else the package version."""
    from pipeline import __version__

    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=10"], capture_output=True,
                             text=True, timeout=5, cwd=Path(__file__).resolve().parent)
        if out.returncode == 0 and out.stdout.strip():
            return f"{__version__}+{out.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    return __version__


def scrub(d):
    """Drop anything that looks like a credential before a config reaches a log, dump or results file."""
    if isinstance(d, dict):
        return {k: scrub(v) for k, v in d.items() if not any(m in str(k).lower() for m in SECRET_MARKERS)}
    if isinstance(d, list):
        return [scrub(v) for v in d]
    return d


def wandb_id(cfg, stage: str, salt: str = "") -> str:
    base = f"{cfg.run_id}-{stage}{salt}"
    if len(base) <= 64:
        return base
    return base[:40] + "-" + hashlib.sha1(base.encode()).hexdigest()[:16]


def init_kwargs(cfg, ws, stage: str, *, resume_id: str | None = None) -> dict:
    """Arguments for wandb.init / WandbLogger: grouped by the config without its seed, job_type = stage."""
    in_sweep = bool(os.environ.get("WANDB_SWEEP_ID"))
    kw = dict(
        project=os.environ.get("WANDB_PROJECT") or cfg.tracking.project,
        entity=os.environ.get("WANDB_ENTITY") or cfg.tracking.entity,
        group=cfg.group, job_type=stage, name=f"{cfg.run_id}-{stage}",
        tags=[cfg.benchmark, cfg.method, cfg.preset, f"code:{code_version()}", *cfg.tracking.tags],
        config=scrub(cfg.to_dict()), dir=str(ws.wandb_dir),
    )
    if not in_sweep and resume_id:  # inside a sweep, W&B owns the run id (ANCHORS B4)
        kw.update(id=resume_id, resume="allow")
    return kw


def define_summaries(run, tasks=(), prefixes=("probe/val", "probe/test", "val", "train")) -> None:
    """`define_metric` summaries: best-so-far max for accuracies, min for errors/losses (W&B globs only match
    suffixes, so per-task keys are spelled out)."""
    if run is None or not hasattr(run, "define_metric"):
        return
    for prefix in prefixes:
        for metric, how in SUMMARIES.items():
            run.define_metric(f"{prefix}/{metric}", summary=how)
            for task in tasks:
                run.define_metric(f"{prefix}/{task}/{metric}", summary=how)


def start_run(cfg, ws, stage: str, *, resume_id: str | None = None, tasks=()):
    """A plain W&B run for stages without a Trainer (probe, report, download). Returns None when disabled."""
    import wandb

    if not wandb_enabled():
        return None
    run = wandb.init(**init_kwargs(cfg, ws, stage, resume_id=resume_id))
    define_summaries(run, tasks)
    return run


def make_logger(cfg, ws, stage: str, *, resume_id: str | None = None):
    from pytorch_lightning.loggers import WandbLogger

    if not wandb_enabled():
        return False
    kw = init_kwargs(cfg, ws, stage, resume_id=resume_id)
    return WandbLogger(save_dir=str(ws.wandb_dir), log_model=False, **kw)


def sync_hint(ws) -> str | None:
    if wandb_mode() != "offline":
        return None
    return f"W&B runs are offline; upload them later with: wandb sync {ws.wandb_dir / 'wandb'}/offline-run-*"


# -------------------------------------------------------------------------------------------- telemetry

def _batch_size(batch) -> int:
    if isinstance(batch, dict):
        batch = batch.get("views", batch.get("x"))
    while isinstance(batch, (list, tuple)):
        batch = batch[0]
    if isinstance(batch, dict):
        return _batch_size(next(iter(batch.values())))
    return int(batch.shape[0])


class _NVML:
    """GPU utilisation/memory/power/temperature through NVML when nvidia-ml-py and a driver are present."""

    def __init__(self, device_index: int):
        self.handle = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nvml = pynvml
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
        except Exception:  # no library, no driver, no GPU: the keys are simply absent
            self.handle = None

    def read(self) -> dict:
        if self.handle is None:
            return {}
        n, h, out = self.nvml, self.handle, {}
        for key, fn in (("gpu/utilization_pct", lambda: n.nvmlDeviceGetUtilizationRates(h).gpu),
                        ("gpu/memory_used_gb", lambda: n.nvmlDeviceGetMemoryInfo(h).used / 2**30),
                        ("gpu/power_w", lambda: n.nvmlDeviceGetPowerUsage(h) / 1000.0),
                        ("gpu/temperature_c", lambda: n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU))):
            try:
                out[key] = float(fn())
            except Exception:
                pass
        return out


class TelemetryCallback(pl.Callback):
    """samples/s, step time, data-wait time and learning rate under perf/; on CUDA, torch peak memory and NVML
    readings under gpu/. Nothing GPU-related is logged (or fails) on a CPU."""

    def __init__(self, every_n_steps: int = 10):
        self.every = max(1, every_n_steps)
        self._last_end = None
        self._t0 = None
        self._nvml = None
        self.epoch_stats: dict[str, list[float]] = {}

    def on_train_start(self, trainer, pl_module):
        import torch

        if pl_module.device.type == "cuda":
            self._nvml = _NVML(pl_module.device.index or 0)
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_train_epoch_start(self, trainer, pl_module):
        self._last_end = time.perf_counter()
        self.epoch_stats = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._t0 = time.perf_counter()
        self._wait = self._t0 - (self._last_end or self._t0)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        import torch

        log_now = trainer.global_step % self.every == 0
        if log_now and pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)  # honest step times on an asynchronous device
        t = time.perf_counter()
        step = t - self._t0
        n = _batch_size(batch)
        stats = {"perf/step_time_s": step, "perf/data_wait_s": self._wait,
                 "perf/samples_per_s": n / max(step + self._wait, 1e-9)}
        for k, v in stats.items():
            self.epoch_stats.setdefault(k, []).append(v)
        self._last_end = t
        if not log_now:
            return
        if trainer.optimizers:
            stats["perf/lr"] = trainer.optimizers[0].param_groups[0]["lr"]
        if pl_module.device.type == "cuda":
            stats["gpu/max_allocated_gb"] = torch.cuda.max_memory_allocated(pl_module.device) / 2**30
            stats["gpu/max_reserved_gb"] = torch.cuda.max_memory_reserved(pl_module.device) / 2**30
            if self._nvml is not None:
                stats.update(self._nvml.read())
        pl_module.log_dict(stats, on_step=True, on_epoch=False, batch_size=n, rank_zero_only=True)

    def epoch_means(self) -> dict[str, float]:
        # the first step of an epoch includes warm-up work; drop it when there are others
        return {k: sum(v[1:] or v) / len(v[1:] or v) for k, v in self.epoch_stats.items() if v}


class MetricsFileCallback(pl.Callback):
    """Per-epoch training summaries into metrics.jsonl (next to the checkpoints) and the results store, on rank 0,
    so reports and notebooks never depend on W&B."""

    def __init__(self, run_id: str, run_dir: Path, store, telemetry: TelemetryCallback | None):
        self.run_id, self.path, self.store, self.telemetry = run_id, Path(run_dir) / "metrics.jsonl", store, telemetry

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.global_rank != 0 or trainer.sanity_checking:
            return
        epoch = trainer.current_epoch
        rows = {}
        for key, value in trainer.callback_metrics.items():
            if key.startswith(("train/", "val/")) and not key.endswith("_step"):
                rows[key.removesuffix("_epoch")] = float(value)
        if self.telemetry is not None:
            rows.update(self.telemetry.epoch_means())
        if trainer.optimizers:
            rows["lr"] = trainer.optimizers[0].param_groups[0]["lr"]
        with open(self.path, "a") as f:
            f.write(json.dumps({"epoch": epoch, "stage": "pretrain", **rows}) + "\n")
        store_rows = []
        for key, value in rows.items():
            if key.startswith("val/"):
                store_rows.append(("val", "all", key[4:], value))
            elif key.startswith("train/"):
                store_rows.append(("train", "all", key[6:], value))
            else:
                store_rows.append(("train", "all", key, value))
        self.store.log_metrics(self.run_id, "pretrain", store_rows, step=epoch)
