"""Lightning callbacks and plugins of the pretrain stage: atomic checkpoints, preemption, the per-epoch
validation probe, and plain progress lines for non-terminals."""
from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

log = logging.getLogger("infmask.pretrain")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary sibling, fsync, then rename: a kill mid-write never leaves a truncated last.ckpt."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)


class PreemptionCheckpoint(pl.Callback):
    """On Lightning's SIGTERM exception, save last.ckpt before the trainer tears down (mid-epoch state)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_exception(self, trainer, pl_module, exception):
        if type(exception).__name__ == "SIGTERMException":
            trainer.save_checkpoint(self.path)


class PlainProgress(pl.Callback):
    """Periodic log lines instead of a progress bar when stderr is not a terminal (CI, sweep agents)."""

    def __init__(self, every_s: float = 30.0):
        self.every_s = every_s
        self._last = 0.0

    def on_train_epoch_start(self, trainer, pl_module):
        self._t0 = time.time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        now = time.time()
        if now - self._last >= self.every_s and trainer.global_rank == 0:
            self._last = now
            loss = trainer.callback_metrics.get("train/loss")
            n = trainer.num_training_batches
            print(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs} batch {batch_idx + 1}/{n}"
                  + (f" loss {float(loss):.4f}" if loss is not None else ""), file=sys.stderr, flush=True)

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.global_rank != 0:
            return
        m = trainer.callback_metrics
        parts = [f"{k}={float(v):.4f}" for k, v in sorted(m.items())
                 if k in ("train/loss_epoch", "train/loss", "val/loss", "probe/val/acc1", "probe/val/mse",
                          "probe/val/f1_mean")]
        print(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs} done in {time.time() - self._t0:.1f} s "
              + " ".join(parts), file=sys.stderr, flush=True)


def probe_split(datamodule, split: str, protocol: str) -> str:
    """Under the labelled 'reference' protocol, the validation probe scores what the reference called val:
    for Trifeatures (and Vision&Touch) that is the test split. Never the default."""
    if protocol == "reference" and split == "val":
        return getattr(datamodule, "reference_val_split", "val")
    return split


class ValProbeCallback(pl.Callback):
    """The per-epoch linear probe on the validation split (SPEC §4, step 1): probe hyper-parameters chosen on a
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
        e, n = trainer.current_epoch + 1, self.cfg.probe.every_n_epochs
        return e % n == 0 or e == trainer.max_epochs

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
                                                     p.max_iter)
                per_task[task] = probing.evaluate(kind, res, (val[0], val[1][task]))
            results = {"per_task": per_task, "mean": probing.mean_over_tasks(per_task)}
        results = trainer.strategy.broadcast(results, src=0)
        logged = {f"probe/val/{k}": v for k, v in results["mean"].items()}
        for task, metrics in results["per_task"].items():
            logged.update({f"probe/val/{task}/{k}": v for k, v in metrics.items()})
        pl_module.log_dict(logged, on_epoch=True, sync_dist=False, rank_zero_only=False)
        if trainer.global_rank == 0:
            rows = [("val", "all", k, v) for k, v in results["mean"].items()]
            rows += [("val", t, k, v) for t, m in results["per_task"].items() for k, v in m.items()]
            self.store.log_metrics(self.cfg.run_id, "pretrain", rows, step=trainer.current_epoch)
        value = results["mean"].get(self.cfg.probe.monitor)
        if value is None:
            return
        better = self.best is None or (value > self.best if self.cfg.probe.mode == "max" else value < self.best)
        if better:
            self.best = value
            trainer.save_checkpoint(self.best_path)
