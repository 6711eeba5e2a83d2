"""`infmask bench --real-steps N`: N training steps through the real `infmask pretrain` path, beside the bench step.

    infmask bench trifeatures --preset cpu --real-steps 40 --no-baseline --compare none --json bench.json

The bench step (`infmask.bench.step`) times the model's work on a fixed batch. Real training adds the loader,
the host-to-device copy, Lightning's loop, our callbacks (telemetry, metrics file, preemption), W&B logging and,
at each epoch's end, the SSL validation loss, the validation probe and the checkpoint write. This runs that path
unchanged (`pretrain()` with its own callbacks, W&B offline, the real datamodule) on a copy of the config trained
for `warmup + N` steps in a scratch workspace that borrows the real workspace's data, and times it with one extra
callback.

Figures:
* `samples_per_s`: samples of the timed steps over their wall time. A timed stretch runs from the end of the
  warm-up steps (or an epoch's start, or a bench step) to the end of the epoch's last step (or the next bench
  step); on CUDA the device is synchronised at those ends only, since a sync per step would remove the very
  overlap being measured.
* `bench_samples_per_s`: the bench's fast step (median), run between the real steps (a few in a row after every
  few real steps, outside the timed stretches), so that a busy machine slows both sides alike; `real_over_bench`
  is the ratio, `real_over_bench_cpu_time` the same in this process's CPU time per sample.
* `step_s_median`, `data_s_median`: per step, the median wall time, and the part spent before the step's
  `on_train_batch_start` (loader, copy to the device, augmentation in `on_after_batch_transfer`).
* `epoch_end`: seconds between an epoch's last step and the next epoch (or the end of training): the SSL
  validation loss, the validation probe, and the rest (checkpoint writes, metrics file); and
  `epoch_samples_per_s_est`, the preset's whole training estimated from these: full epochs at the timed rate,
  each with that end, the probe counted on the epochs that probe.
* `telemetry`: the perf/ and gpu/ values the run's TelemetryCallback last logged; on CUDA `gpu_utilization_pct`
  is NVML's reading averaged over the timed steps.
"""
from __future__ import annotations

import math
import os
import shutil
import statistics
import tempfile
import time

import pytorch_lightning as pl

from ..errors import UsageError


class LoopTimer(pl.Callback):
    """Wall time of the real training loop's steps after `warmup` steps, and of each epoch's end."""

    def __init__(self, warmup: int, device, bench_step=None, every: int = 0, block: int = 1, limit: int = 0):
        import torch

        self.warmup = warmup
        # after every `every` timed steps, `block` bench steps in a row (`limit` in all): the first step after
        # a switch finds the other model's weights in the caches, a cost the bench's median leaves out
        self.bench_step, self.every, self.block, self.limit = bench_step, every, block, limit
        self.bench_s = []
        self.cuda = device.type == "cuda"
        self._sync = (lambda: torch.cuda.synchronize(device)) if self.cuda else (lambda: None)
        self.n = 0                       # training steps seen
        self.seconds = 0.0               # wall time of the timed stretches
        self.cpu_seconds = 0.0           # and this process's CPU time in them (steadier on a shared machine)
        self._cpu_start = None
        self.samples = 0
        self.step_s, self.data_s, self.util = [], [], []
        self.epoch_end = []              # per epoch: {"total": s, "val_loss": s, "probe": s}
        self.telemetry = {}
        self._nvml = None
        self._start = self._prev = self._batch_start = self._last_end = None
        self._marks = {}

    # --- the timed stretch ----------------------------------------------------------------------------------
    def on_train_start(self, trainer, pl_module):
        if self.cuda:
            from ..callbacks import _NVML

            self._nvml = _NVML(pl_module.device.index or 0)

    def on_train_epoch_start(self, trainer, pl_module):
        now = time.perf_counter()
        if self._last_end is not None:
            self._close_epoch_end(now)
        self._prev = now
        if self.n >= self.warmup:
            self._sync()
            self._start = self._prev = time.perf_counter()
            self._cpu_start = time.process_time()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._batch_start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        from ..callbacks import _batch_size

        self.n += 1
        last = batch_idx == trainer.num_training_batches - 1
        timed = self._start is not None
        pause = (timed and not last and self.bench_step is not None and len(self.bench_s) < self.limit
                 and (len(self.step_s) + 1) % self.every == 0)
        if self.n == self.warmup or (timed and (last or pause)):
            self._sync()                  # a stretch starts or ends here: wait for the device's queued work
        now = time.perf_counter()
        if timed:
            self.step_s.append(now - self._prev)
            self.data_s.append(self._batch_start - self._prev)
            self.samples += _batch_size(batch)
            if self._nvml is not None:
                self.util.append(self._nvml.read().get("gpu/utilization_pct"))
            if last or pause:
                self.seconds += now - self._start
                self.cpu_seconds += time.process_time() - self._cpu_start
                self._start = None
            if last:
                self.telemetry = {k: float(v) for k, v in trainer.callback_metrics.items()
                                  if k.startswith(("perf/", "gpu/"))}
        if pause:   # the bench step here, between real steps: a busy machine slows both alike
            self.bench_s += [self.bench_step() for _ in range(min(self.block, self.limit - len(self.bench_s)))]
            now = time.perf_counter()
        if (self.n == self.warmup or pause) and not last:
            self._start, self._cpu_start = now, time.process_time()
        self._prev = now
        if last:
            self._last_end = now
            self._marks = {}

    # --- the epoch's end: SSL validation loss, probe, checkpoint ---------------------------------------------
    def on_validation_start(self, trainer, pl_module):
        self._marks.setdefault("val_start", time.perf_counter())

    def on_validation_epoch_end(self, trainer, pl_module):
        # this callback runs before ValProbeCallback's hook (it comes first in the list), so the probe starts now
        self._marks.setdefault("probe_start", time.perf_counter())

    def on_validation_end(self, trainer, pl_module):
        self._marks.setdefault("probe_end", time.perf_counter())

    def on_train_end(self, trainer, pl_module):
        if self._last_end is not None:
            self._close_epoch_end(time.perf_counter())

    def _close_epoch_end(self, now: float) -> None:
        m = self._marks
        span = {"total": now - self._last_end}
        if "val_start" in m and "probe_start" in m:
            span["val_loss"] = m["probe_start"] - m["val_start"]
        if "probe_start" in m and "probe_end" in m:
            span["probe"] = m["probe_end"] - m["probe_start"]
        self.epoch_end.append(span)
        self._last_end, self._marks = None, {}

    def summary(self) -> dict:
        if not self.samples or self.seconds <= 0:
            raise RuntimeError("the real training loop ran no timed step")
        md = statistics.median
        out = {"steps": len(self.step_s), "samples": self.samples, "seconds": round(self.seconds, 4),
               "samples_per_s": round(self.samples / self.seconds, 3),
               "step_s": round(self.seconds / len(self.step_s), 5),
               "step_cpu_s": round(self.cpu_seconds / len(self.step_s), 5),
               "step_s_median": round(md(self.step_s), 5), "data_s_median": round(md(self.data_s), 5),
               "steps_s": [round(t, 5) for t in self.step_s]}
        if self.epoch_end:
            out["epoch_end"] = {k: round(md([e[k] for e in self.epoch_end if k in e]), 4)
                                for k in ("total", "val_loss", "probe") if any(k in e for e in self.epoch_end)}
        util = [u for u in self.util if u is not None]
        if util:
            out["gpu_utilization_pct"] = round(sum(util) / len(util), 1)
        out["telemetry"] = {k: round(v, 5) for k, v in sorted(self.telemetry.items())}
        return out


def _plan(steps: int, per_epoch: int) -> tuple[int, int]:
    """(epochs, batches per epoch) for at least `steps` steps: one epoch when the loader is long enough."""
    epochs = max(1, math.ceil(steps / per_epoch))
    return epochs, math.ceil(steps / epochs)


def _scratch_workspace(ws):
    """A workspace of its own (run directory, results store, W&B files) that reads the real one's data."""
    from ..workspace import Workspace

    root = tempfile.mkdtemp(prefix=".bench-real-", dir=ws.root)
    for sub in ("raw", "processed"):
        (ws.root / sub).mkdir(parents=True, exist_ok=True)
        os.symlink(ws.root / sub, os.path.join(root, sub))
    return Workspace.open(root)


def check(cfg, steps: int) -> None:
    if steps < 1:
        raise UsageError(f"--real-steps must be >= 1, got {steps}")
    if cfg.trainer.strategy not in ("auto", "single_device") or cfg.trainer.devices not in (1, "1", "auto"):
        raise UsageError("--real-steps times one process on one device; drop the trainer.devices / "
                         "trainer.strategy overrides")


def real_loop(cfg, *, steps: int, warmup: int, device, bench_step=None, bench_steps: int = 0, log=print,
              root=None) -> dict:
    """Train `cfg` for `warmup + steps` steps through `pretrain()` and time it (see the module docstring); with
    `bench_step`, run it `bench_steps` times spread between the real steps, outside the timed stretches."""
    from ..config import Config
    from ..stages.data_stages import datamodule_for, ensure_data
    from ..stages.pretrain import pretrain
    from ..workspace import Workspace

    check(cfg, steps)
    ws = Workspace.open(root)
    ensure_data(cfg, ws)
    dm = datamodule_for(cfg, ws)
    dm.setup("fit")
    per_epoch = len(dm.train_dataloader())
    epochs, batches = _plan(warmup + steps, per_epoch)
    d = cfg.to_dict()
    d["trainer"].update(max_epochs=epochs, limit_train_batches=batches, early_stopping_patience=None,
                        accelerator="gpu" if device.type == "cuda" else "cpu",
                        devices=[device.index or 0] if device.type == "cuda" else 1)
    real = Config.from_dict(d)
    block = min(3, bench_steps)
    every = max(1, steps // (math.ceil(bench_steps / block) + 1)) if bench_step is not None and bench_steps else 0
    timer = LoopTimer(warmup, device, bench_step if every else None, every, block, bench_steps)
    scratch = _scratch_workspace(ws)
    log(f"  real training loop: {epochs} epoch(s) of {batches} steps ({warmup} warm-up) through `pretrain`, "
        f"scratch workspace {scratch.root}")
    try:
        pretrain(real, scratch, force=True, extra_callbacks=[timer])
    finally:
        shutil.rmtree(scratch.root, ignore_errors=True)
    out = timer.summary()
    out["bench_between_s"] = [round(t[0], 5) for t in timer.bench_s]
    out["bench_between_cpu_s"] = [round(t[1], 5) for t in timer.bench_s]
    out.update(epochs=epochs, batches_per_epoch=batches, preset_batches_per_epoch=per_epoch,
               warmup=warmup, workers=cfg.data.num_workers)
    if "epoch_end" in out:
        # the preset's whole training: every epoch's steps at the timed rate, then its end, with the probe's cost
        # on the epochs that probe (the timed run probed at its one last epoch)
        from ..progress import probe_due

        E, end = cfg.trainer.max_epochs, out["epoch_end"]
        probes = sum(probe_due(e, cfg.probe.every_n_epochs, E) for e in range(1, E + 1))
        mean_end = end["total"] - end.get("probe", 0.0) * (1 - probes / E)
        out["epoch_end_mean_s_est"] = round(mean_end, 4)
        out["epoch_samples_per_s_est"] = round(
            per_epoch * cfg.data.batch_size / (per_epoch * out["step_s"] + mean_end), 3)
    return out


def compare(res: dict, B: int) -> dict:
    """Real-loop throughput against the bench step's: the one timed between the real steps where there is one
    (the same stretch of machine load), else the bench's own run before the loop."""
    real = res["real_loop"]
    between = real.get("bench_between_s") or []
    real["bench_samples_per_s_before"] = res["fast"]["samples_per_s"]
    if between:
        real["bench_samples_per_s_between"] = round(B / statistics.median(between), 3)
    real["bench_samples_per_s"] = real.get("bench_samples_per_s_between", real["bench_samples_per_s_before"])
    real["real_over_bench"] = round(real["samples_per_s"] / real["bench_samples_per_s"], 3)
    cpu = statistics.median(real.get("bench_between_cpu_s") or [res["fast"]["step_cpu_s"]])
    real["real_over_bench_cpu_time"] = round(cpu * real["samples"] / (B * real["steps"]) / real["step_cpu_s"], 3)
    if "epoch_samples_per_s_est" in real:
        real["epoch_over_bench_est"] = round(real["epoch_samples_per_s_est"] / real["bench_samples_per_s"], 3)
    return real


def format_real(real: dict) -> str:
    lines = [f"real training loop ({real['steps']} timed steps, {real['epochs']} epoch(s) of "
             f"{real['batches_per_epoch']}): {real['samples_per_s']} samples/s against the bench step's "
             f"{real['bench_samples_per_s']} (timed between the real steps; "
             f"{real['bench_samples_per_s_before']} before them): {real['real_over_bench']}x",
             f"  step {real['step_s_median']} s median, of which {real['data_s_median']} s loader + copy + "
             f"augmentation; CPU time per sample against the bench step's: {real['real_over_bench_cpu_time']}x"]
    if "epoch_end" in real:
        lines.append(f"  epoch end (s): {real['epoch_end']}; the preset's whole training "
                     f"({real['preset_batches_per_epoch']} steps an epoch, {real['epoch_end_mean_s_est']} s epoch end "
                     f"on average) est. "
                     f"{real['epoch_samples_per_s_est']} samples/s ({real['epoch_over_bench_est']}x)")
    if "gpu_utilization_pct" in real:
        lines.append(f"  GPU utilisation {real['gpu_utilization_pct']} % (NVML, mean over the timed steps)")
    if real.get("telemetry"):
        lines.append(f"  telemetry: {real['telemetry']}")
    return "\n".join(lines)
