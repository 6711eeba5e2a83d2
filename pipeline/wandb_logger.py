"""Lightning's WandbLogger as the pretrain stage uses it: summaries declared for the keys a run logs, and no
`anonymous` key (wandb warns about it whatever its value)."""
from __future__ import annotations

from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_only

from .tracking import declare_summaries


class InfmaskWandbLogger(WandbLogger):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._wandb_init.pop("anonymous", None)
        self._declared: set[str] = set()

    @rank_zero_only
    def log_metrics(self, metrics, step=None):
        declare_summaries(self.experiment, metrics, self._declared)
        super().log_metrics(metrics, step)
