"""Lightning callbacks and plugins of the pretrain stage: atomic checkpoints, preemption, the per-epoch
validation probe, telemetry and metrics.jsonl (console progress: pipeline/progress.py)."""
from __future__ import annotations

import json
import logging
import signal
import threading
import time
from pathlib import Path

import pytorch_lightning as pl
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from infmask.data.durable import atomic_path

from .progress import probe_due

log = logging.getLogger("infmask.pretrain")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary sibling, fsync, then rename: a kill mid-write never leaves a truncated last.ckpt."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        with atomic_path(Path(path)) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)


class PreemptionRequested(Exception):
    """Raised on every rank at the same training batch after a preemption signal; last.ckpt is already saved."""

    def __init__(self, signum: int):
        super().__init__(f"preempted by signal {signum}")
        self.signum = signum


class PreemptionCheckpoint(pl.Callback):
    """Preemption by SIGTERM (Slurm, W&B agents, `kill`) or SIGUSR1 (Slurm's `--signal=USR1@T` warning).

    While training, the handler only records the signal. At the end of the current training batch the ranks agree
    (one all-reduce under DDP) whether any of them was signalled; if so every rank saves last.ckpt together (the
    mid-epoch state) and raises PreemptionRequested, which the pretrain stage turns into status `preempted` and exit
    code 128 + signal. Lightning's own SIGTERM handler is replaced for the training loop because it runs a
    collective inside the signal handler, which deadlocks DDP when several ranks are signalled at once (srun,
    `scancel` and `kill -- -PGID` signal every rank). Lightning restores the handlers it found when fit ends."""

    SIGNALS = ("SIGTERM", "SIGUSR1")

    def __init__(self, path: Path):
        self.path = Path(path)
        self.signum: int | None = None
        self._previous: dict = {}

    def _record(self, signum, frame):
        if self.signum is None:
            self.signum = signum

    def _set_handlers(self) -> dict:
        if threading.current_thread() is not threading.main_thread():
            return {}
        return {sig: signal.signal(sig, self._record)
                for sig in (getattr(signal, name) for name in self.SIGNALS if hasattr(signal, name))}

    def install(self) -> None:
        """Record the signals from now on (call before fit: a signal during set-up stops the run at its first
        batch instead of killing it); `uninstall` puts the previous handlers back."""
        self._previous = self._set_handlers()

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def on_train_start(self, trainer, pl_module):
        self._set_handlers()  # fit has put Lightning's SIGTERM handler in place; it restores ours when fit ends
        if getattr(trainer, "received_sigterm", False):  # a SIGTERM that Lightning's handler caught meanwhile
            self._record(signal.SIGTERM, None)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        stop = self.signum is not None
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop:
            trainer.save_checkpoint(self.path, weights_only=False)
            raise PreemptionRequested(self.signum or signal.SIGTERM)


def probe_split(datamodule, split: str, protocol: str) -> str:
    """Under the labelled 'reference' protocol, the validation probe scores what the reference called val:
    for Trifeatures (and Vision&Touch) that is the test split. Never the default."""
    if protocol == "reference" and split == "val":
        return getattr(datamodule, "reference_val_split", "val")
    return split


class ValProbeCallback(pl.Callback):
    """The per-epoch linear probe on the validation split: probe hyper-parameters chosen on a
    hold-out of the train features, scored on val. Drives best.ckpt and early stopping. Computed on rank 0 and
    broadcast, so every DDP rank logs the same value."""

    def __init__(self, cfg, store, best_path: Path):
        self.cfg, self.store, self.best_path = cfg, store, Path(best_path)
        self.best = None

    def state_dict(self):
        return {"best": self.best}

    def load_state_dict(self, state):
        self.best = state.get("best")

    def _due(self, trainer) -> bool:
        return probe_due(trainer.current_epoch + 1, self.cfg.probe.every_n_epochs, trainer.max_epochs)

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking or not self._due(trainer):
            return
        from . import probing

        results = None
        if trainer.global_rank == 0:
            dm, p = trainer.datamodule, self.cfg.probe
            train = probing.extract_features(pl_module, dm, "train", pl_module.device,
                                             max_samples=p.max_train_samples)
            val = probing.extract_features(pl_module, dm, probe_split(dm, "val", p.protocol), pl_module.device)
            per_task = {}
            for task, kind in dm.tasks.items():
                res = probing.holdout_select_and_fit(kind, (train[0], train[1][task]), p.costs, p.fastsearch,
                                                     p.max_iter, standardize=p.standardize)
                per_task[task] = probing.evaluate(kind, res, (val[0], val[1][task]))
            results = {"per_task": per_task, "mean": probing.mean_over_tasks(per_task)}
        results = trainer.strategy.broadcast(results, src=0)
        logged = {f"probe/val/{k}": v for k, v in results["mean"].items()}
        for task, metrics in results["per_task"].items():
            logged.update({f"probe/val/{task}/{k}": v for k, v in metrics.items()})
        # identical on every rank after the broadcast: sync_dist averages equal values (and keeps Lightning quiet)
        pl_module.log_dict(logged, on_epoch=True, sync_dist=True, rank_zero_only=False)
        if trainer.global_rank == 0:
            rows = [("val", "all", k, v) for k, v in results["mean"].items()]
            rows += [("val", t, k, v) for t, m in results["per_task"].items() for k, v in m.items()]
            self.store.log_metrics(self.cfg.run_id, "pretrain", rows, step=trainer.current_epoch)
        value = results["mean"].get(self.cfg.probe.monitor)
        if value is None:
            return
        better = self.best is None or (value > self.best if self.cfg.probe.mode == "max" else value < self.best)
        if better:  # weights only: best.ckpt is probed, never resumed from (last.ckpt holds the resume state)
            self.best = value
            trainer.save_checkpoint(self.best_path, weights_only=True)


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


def _epoch_of(line: str) -> float:
    try:
        return json.loads(line).get("epoch", float("inf"))
    except (ValueError, AttributeError):  # a line torn by a kill mid-write
        return float("inf")


class MetricsFileCallback(pl.Callback):
    """Per-epoch training summaries into metrics.jsonl (next to the checkpoints) and the results store, on rank 0,
    so reports and notebooks never depend on W&B."""

    def __init__(self, run_id: str, run_dir: Path, store, telemetry: TelemetryCallback | None):
        self.run_id, self.path, self.store, self.telemetry = run_id, Path(run_dir) / "metrics.jsonl", store, telemetry

    def on_train_start(self, trainer, pl_module):
        """On resume, drop lines of epochs the checkpoint does not hold (written after it, before a kill): they are
        trained again, so each epoch appears once."""
        if trainer.global_rank != 0 or not self.path.exists():
            return
        lines = self.path.read_text().splitlines()
        kept = [ln for ln in lines if ln.strip() and _epoch_of(ln) < trainer.current_epoch]
        if len(kept) != len(lines):
            from infmask.data.durable import atomic_write_text

            atomic_write_text(self.path, "".join(ln + "\n" for ln in kept))

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
