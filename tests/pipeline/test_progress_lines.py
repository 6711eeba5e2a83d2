"""The plain (non-terminal) progress lines: a validation-probe value is printed only on epochs that probed."""
import re

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from infmask.progress import PlainProgress, probe_due


def test_probe_due_schedule():
    assert [e for e in range(1, 6) if probe_due(e, 2, 5)] == [2, 4, 5]
    assert not any(probe_due(e, 0, 5) for e in range(1, 6))


class _Tiny(pl.LightningModule):
    """Logs a probe metric the way ValProbeCallback does: on the epochs probe_due selects, never otherwise."""

    def __init__(self, every):
        super().__init__()
        self.lin, self.every = torch.nn.Linear(2, 1), every

    def training_step(self, batch, _):
        loss = self.lin(batch[0]).pow(2).mean()
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, _):
        self.log("val/loss", self.lin(batch[0]).pow(2).mean())

    def on_validation_epoch_end(self):
        if not self.trainer.sanity_checking and probe_due(self.current_epoch + 1, self.every, self.trainer.max_epochs):
            self.log("probe/val/acc1", 0.25 + 0.01 * self.current_epoch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_epoch_lines_do_not_repeat_a_stale_probe_value(tmp_path, capsys):
    loader = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4)
    trainer = pl.Trainer(max_epochs=5, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu",
                         num_sanity_val_steps=0, callbacks=[PlainProgress(probe_every_n_epochs=2)])
    trainer.fit(_Tiny(2), loader, loader)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if re.match(r"epoch \d+/5 done", ln)]
    assert len(lines) == 5
    with_probe = [int(re.match(r"epoch (\d+)", ln).group(1)) for ln in lines if "probe/val/acc1=" in ln]
    assert with_probe == [2, 4, 5]
    assert "probe/val/acc1=0.2600" in lines[1] and "probe/val/acc1=0.2800" in lines[3]


def _fit(tmp_path, progress, bar: bool):
    pl.seed_everything(0, verbose=False)
    loader = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4)
    trainer = pl.Trainer(max_epochs=5, logger=False, enable_checkpointing=False, enable_progress_bar=bar,
                         enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu",
                         num_sanity_val_steps=0, callbacks=[progress])
    trainer.fit(_Tiny(2), loader, loader)


def _summaries(text: str) -> list[str]:
    """The epoch summary lines without their timing."""
    return [re.sub(r" done in [\d.]+ s", " done", ln) for ln in text.replace("\r", "\n").splitlines()
            if re.match(r"epoch \d+/5 done", ln)]


def test_terminal_bar_and_log_lines_tell_the_same(tmp_path, capsys):
    """On a terminal (the bar) and piped (plain lines): the same epoch numbers, counted from 1, and the same
    summary with the same probe values; the bar shows no logger version."""
    from infmask.progress import EpochBar

    _fit(tmp_path, PlainProgress(probe_every_n_epochs=2), bar=False)
    plain = capsys.readouterr().err
    _fit(tmp_path, EpochBar(probe_every_n_epochs=2), bar=True)
    captured = capsys.readouterr()
    terminal = captured.err + captured.out
    assert len(_summaries(plain)) == 5 and _summaries(terminal) == _summaries(plain)
    assert "probe/val/acc1=0.2600" in _summaries(terminal)[1]
    assert "epoch 1/5" in terminal and "epoch 5/5" in terminal
    assert not re.search(r"Epoch \d", terminal) and "v_num" not in terminal
