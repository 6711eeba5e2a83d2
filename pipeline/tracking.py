"""W&B setup (offline by default, WANDB_MODE respected).

Rules learned the hard way:
- never pass `mode=`/`offline=` to wandb or WandbLogger: an explicit flag overrides WANDB_MODE=disabled;
  the CLI sets WANDB_MODE=offline in the environment when the user did not choose;
- no checkpoints or models as artifacts (log_model=False); the results store and metrics.jsonl are the source of
  truth. The one artifact a run writes is W&B's own storage of the report run's tables (wandb.Table);
- the resolved config is logged once (no save_hyperparameters into the logger);
- summaries (best-so-far max/min) are declared for the keys a run logs, when it first logs them, not up front;
- secrets never enter a config: configs hold no credentials, and we strip any key that looks like one.

Job types say what a run did: download, preprocess, pretrain, probe, report, and pretrain+probe for `infmask
trial` (the unit a sweep agent runs).
"""
from __future__ import annotations

import hashlib
import os
import subprocess
from functools import lru_cache
from pathlib import Path

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
    from infmask import __version__

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


JOB_TYPES = {"trial": "pretrain+probe"}   # stage -> W&B job_type, where they differ


def init_kwargs(cfg, ws, stage: str, *, resume_id: str | None = None) -> dict:
    """Arguments for wandb.init / WandbLogger: grouped by the config without its seed, named after the run and the
    stage, job_type = what the stage does. Inside a W&B server sweep the agent's run id is used (WANDB_RUN_ID);
    elsewhere `resume_id` (for `infmask sweep` trials, the trial id)."""
    in_sweep = bool(os.environ.get("WANDB_SWEEP_ID"))
    kw = dict(
        project=os.environ.get("WANDB_PROJECT") or cfg.tracking.project,
        entity=os.environ.get("WANDB_ENTITY") or cfg.tracking.entity,
        group=cfg.group, job_type=JOB_TYPES.get(stage, stage), name=f"{cfg.run_id}-{stage}",
        tags=[cfg.benchmark, cfg.method, cfg.preset, f"code:{code_version()}", *cfg.tracking.tags],
        config=scrub(cfg.to_dict()), dir=str(ws.wandb_dir),
    )
    if not in_sweep and resume_id:  # inside a sweep, W&B owns the run id
        kw.update(id=resume_id, resume="allow")
    return kw


def summary_of(key: str) -> str | None:
    """The best-so-far summary of a logged key (`max` for accuracies, `min` for errors and losses), from its last
    path component; None for keys whose last value is the summary (per-step values, perf/, lr, epoch)."""
    if key.endswith("_step"):
        return None
    return SUMMARIES.get(key.rsplit("/", 1)[-1].removesuffix("_epoch"))


def declare_summaries(run, keys, declared: set) -> None:
    """`define_metric(key, summary=...)` for keys about to be logged for the first time: the run declares
    summaries for what it logs and nothing else (W&B globs only match suffixes, so keys are spelled out)."""
    if run is None or not hasattr(run, "define_metric"):
        return
    for key in keys:
        if key in declared:
            continue
        declared.add(key)
        how = summary_of(key)
        if how:
            run.define_metric(key, summary=how)


def start_run(cfg, ws, stage: str, *, resume_id: str | None = None):
    """A plain W&B run for stages without a Trainer (probe). Returns None when disabled."""
    import wandb

    if not wandb_enabled():
        return None
    return wandb.init(**init_kwargs(cfg, ws, stage, resume_id=resume_id))


def start_stage_run(ws, stage: str, name: str, config: dict, tags=()):
    """A W&B run for a stage that has no run config (download, preprocess, report)."""
    import wandb

    if not wandb_enabled():
        return None
    return wandb.init(project=os.environ.get("WANDB_PROJECT") or "infmask", entity=os.environ.get("WANDB_ENTITY"),
                      job_type=stage, name=name, group=f"{stage}/{name}", config=scrub(config),
                      tags=[stage, f"code:{code_version()}", *tags], dir=str(ws.wandb_dir))


def sync_hint(ws) -> str | None:
    if wandb_mode() != "offline":
        return None
    return f"W&B runs are offline; upload them later with: wandb sync {ws.wandb_dir / 'wandb'}/offline-run-*"
