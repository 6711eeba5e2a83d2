"""Lightning's WandbLogger as the pretrain stage uses it: summaries declared for the keys a run logs, and no
`anonymous` key (wandb warns about it whatever its value)."""
from __future__ import annotations

from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_only

from .tracking import declare_summaries, init_kwargs, wandb_enabled


class InfmaskWandbLogger(WandbLogger):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._wandb_init.pop("anonymous", None)
        self._declared: set[str] = set()

    @rank_zero_only
    def log_metrics(self, metrics, step=None):
        declare_summaries(self.experiment, metrics, self._declared)
        super().log_metrics(metrics, step)


def make_logger(cfg, ws, stage: str, *, resume_id: str | None = None):
    """The Trainer's logger for a run's stage; False when W&B is disabled."""
    if not wandb_enabled():
        return False
    kw = init_kwargs(cfg, ws, stage, resume_id=resume_id)
    return InfmaskWandbLogger(save_dir=str(ws.wandb_dir), log_model=False, **kw)
