"""Training progress on the console: the same information on a terminal and in a log.

Both forms count epochs from 1 and end every epoch with the same summary line (`epoch_line`): losses, and the
validation probe's value on the epochs that probed. On a terminal a progress bar (`EpochBar`) shows the running
epoch; elsewhere (CI, sweep agents, `| tee`) `PlainProgress` prints a line at the first batch of every epoch and
then every `every_s` seconds.
"""
from __future__ import annotations

import sys
import time

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.callbacks.progress.tqdm_progress import convert_inf

SUMMARY_KEYS = ("train/loss", "val/loss")
PROBE_KEYS = ("probe/val/acc1", "probe/val/mse", "probe/val/f1_mean")


def probe_due(epoch: int, every_n_epochs: int, max_epochs: int) -> bool:
    """Whether the validation probe runs at the end of (1-based) `epoch`: every n epochs and at the last one."""
    return every_n_epochs > 0 and (epoch % every_n_epochs == 0 or epoch == max_epochs)


def epoch_label(trainer) -> str:
    return f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"


def epoch_line(trainer, probe_every_n_epochs: int, seconds: float) -> str:
    """`epoch 2/8 done in 15.1 s train/loss=... val/loss=... probe/val/acc1=...`. callback_metrics keeps a probe
    value until the next probe: printing it on other epochs would pass it off as this epoch's."""
    keys = list(SUMMARY_KEYS)
    if probe_due(trainer.current_epoch + 1, probe_every_n_epochs, trainer.max_epochs):
        keys += PROBE_KEYS
    m = trainer.callback_metrics
    parts = [f"{k}={float(m[k]):.4f}" for k in sorted(keys) if k in m]
    return f"{epoch_label(trainer)} done in {seconds:.1f} s " + " ".join(parts)


class PlainProgress(pl.Callback):
    """Log lines instead of a progress bar when stderr is not a terminal."""

    def __init__(self, every_s: float = 30.0, probe_every_n_epochs: int = 0):
        self.every_s = every_s
        self.probe_every_n_epochs = probe_every_n_epochs
        self._last = 0.0
        self._t0 = time.time()

    def on_train_start(self, trainer, pl_module):
        self._t0 = time.time()  # a run resumed mid-epoch gets no on_train_epoch_start for that epoch

    def on_train_epoch_start(self, trainer, pl_module):
        self._t0 = time.time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        now = time.time()
        if (batch_idx == 0 or now - self._last >= self.every_s) and trainer.global_rank == 0:
            self._last = now
            loss = trainer.callback_metrics.get("train/loss")
            print(f"{epoch_label(trainer)} batch {batch_idx + 1}/{trainer.num_training_batches}"
                  + (f" loss {float(loss):.4f}" if loss is not None else ""), file=sys.stderr, flush=True)

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.global_rank == 0:
            print(epoch_line(trainer, self.probe_every_n_epochs, time.time() - self._t0), file=sys.stderr,
                  flush=True)


class EpochBar(TQDMProgressBar):
    """Lightning's bar on a terminal, counting epochs as the log lines do (`epoch 1/8`, not `Epoch 0`), without the
    logger's version (`v_num`), and leaving the same summary line as `PlainProgress` at each epoch's end."""

    def __init__(self, probe_every_n_epochs: int = 0):
        super().__init__()
        self.probe_every_n_epochs = probe_every_n_epochs
        self._t0 = time.time()

    def on_train_start(self, trainer, pl_module):
        super().on_train_start(trainer, pl_module)
        self._t0 = time.time()

    def on_train_epoch_start(self, trainer, *args):
        # Lightning's own body, with our label (calling it first would draw `Epoch 0` before the label changes)
        if self._leave:
            self.train_progress_bar = self.init_train_tqdm()
        self.train_progress_bar.set_description(epoch_label(trainer), refresh=False)
        self.train_progress_bar.reset()
        self.train_progress_bar.total = convert_inf(self.total_train_batches)
        self.train_progress_bar.initial = 0
        self._t0 = time.time()

    # Redraw at most this often (and at each bar's end): reading the loss for the bar is a host-device sync, and
    # Lightning's default redraws after every batch.
    refresh_s = 0.5

    def _should_update(self, current: int, total: int) -> bool:
        now = time.monotonic()
        if not self.is_enabled or (current != total and now - getattr(self, "_drawn", 0.0) < self.refresh_s):
            return False
        self._drawn = now
        return True

    def get_metrics(self, trainer, pl_module):
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        # per-step values are not logged to the bar (see BaseMethod._log_all): show the loss from here, throttled
        loss = trainer.callback_metrics.get("train/loss") if trainer.training else None
        if loss is not None:
            items["train/loss"] = f"{float(loss):.3f}"
        return items

    def on_train_epoch_end(self, trainer, pl_module):
        super().on_train_epoch_end(trainer, pl_module)
        self.print(epoch_line(trainer, self.probe_every_n_epochs, time.time() - self._t0), file=sys.stderr)


def progress_callback(probe_every_n_epochs: int, terminal: bool | None = None) -> pl.Callback:
    """The bar on a terminal (stderr is a tty), log lines elsewhere."""
    if terminal is None:
        terminal = sys.stderr.isatty()
    return EpochBar(probe_every_n_epochs) if terminal else PlainProgress(probe_every_n_epochs=probe_every_n_epochs)
