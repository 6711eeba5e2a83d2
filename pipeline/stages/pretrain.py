"""`infmask pretrain`: self-supervised pretraining of one (config, seed), resumable and idempotent.

- `last.ckpt` (full state, to resume) every epoch, written atomically; `best.ckpt` (weights only) whenever the
  per-epoch validation probe improves.
- A finished run keeps one weights-only checkpoint, the one its probe reads (`probe.checkpoint`: best.ckpt, or
  last.ckpt rewritten without the optimiser state); the resume state is deleted once the run is recorded finished.
- Rerunning an interrupted run resumes from `last.ckpt` with the same W&B run id; a finished run is skipped
  unless --force. A damaged `last.ckpt` is a usage error (exit 2) and the run is marked failed.
- One writer per run: rank 0 holds the run's lock (pipeline/run_lock.py) from the skip check to the end of fit;
  the same run started elsewhere meanwhile exits 2 at once.
- A non-finite loss stops the run: the state is saved to `failed.ckpt`, the store says `failed`, exit code 1.
- SIGTERM / SIGUSR1 (preemption): `last.ckpt` is saved, the store says `preempted`, exit code 128+signal.
- DDP (`trainer.devices=N trainer.strategy=ddp`, or one Slurm task per device): every rank runs this function;
  only global rank 0 touches the run directory, the results store and W&B. Other ranks train, then return
  status "worker" (exit code 0, also after a preemption: rank 0 carries the 128+signal code, and Lightning's local
  launcher kills every process as soon as one child exits non-zero).
"""
from __future__ import annotations

import fcntl
import logging
import shutil
import signal
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from infmask.data.durable import atomic_write_text

from ..config import build_config
from ..errors import Preempted, RunFailed, UsageError, first_line
from ..run_lock import run_lock
from ..store import ResultsStore
from ..workspace import Workspace

log = logging.getLogger("infmask.pretrain")


@dataclass
class PretrainResult:
    run_id: str
    run_dir: Path
    status: str
    skipped: bool = False
    wandb_logger: object = None


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def final_checkpoint(run_dir: Path, cfg) -> Path:
    """The one checkpoint a finished run keeps: the one its probe reads."""
    return checkpoint_dir(run_dir) / f"{cfg.probe.checkpoint}.ckpt"


def _trainer_settings(cfg) -> dict:
    import torch

    t = cfg.trainer
    precision = t.precision
    if precision == "auto":
        cuda = torch.cuda.is_available() and t.accelerator in ("auto", "gpu", "cuda")
        precision = "bf16-mixed" if cuda and torch.cuda.is_bf16_supported() else "32-true"
    settings = dict(max_epochs=t.max_epochs, accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
                    strategy=t.strategy, precision=precision, log_every_n_steps=t.log_every_n_steps,
                    deterministic=t.deterministic, num_sanity_val_steps=0, inference_mode=False,
                    use_distributed_sampler=True, benchmark=False)
    # passed only when they limit something: Lightning prints a notice for an explicit 1.0
    for key in ("limit_train_batches", "limit_val_batches"):
        value = getattr(t, key)
        if value is not None and value != 1.0:
            settings[key] = value
    return settings


# Set once this process has started DDP ranks with Lightning's script launcher (strategy=ddp, no cluster launcher):
# those ranks ran this command once and have exited, so a second DDP fit here would wait for ranks that never come.
_LAUNCHED_RANKS = False


@contextmanager
def _exclusive(path: Path):
    """An flock held for the block: DDP ranks started together (srun) prepare the data one after the other."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def pretrain(cfg, ws: Workspace, *, force: bool = False, sweep_id: str | None = None,
             keep_wandb_open: bool = False, stage: str = "pretrain", wandb_run_id: str | None = None,
             extra_callbacks: tuple = ()) -> PretrainResult:
    """Train `cfg`. `stage` names the W&B run and its job type (`trial`: pretrain + probe in one run);
    `wandb_run_id`: the W&B run id to use (an `infmask sweep` trial's id) instead of one derived from the config;
    `extra_callbacks` go first in the list (`infmask bench --real-steps` times the loop with one)."""
    import pytorch_lightning as pl
    from lightning_fabric.utilities.exceptions import MisconfigurationException
    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

    from ..callbacks import (AtomicCheckpointIO, MetricsFileCallback, PreemptionCheckpoint, TelemetryCallback,
                             ValProbeCallback)
    from ..progress import EpochBar, progress_callback
    from ..quiet import quiet_third_party

    quiet_third_party()
    store = ResultsStore(ws.db_path)
    run_dir = ws.run_dir(cfg)
    ckpt_dir = checkpoint_dir(run_dir)
    last = ckpt_dir / "last.ckpt"
    kept = final_checkpoint(run_dir, cfg)

    telemetry = TelemetryCallback(every_n_steps=cfg.trainer.log_every_n_steps)
    preemption = PreemptionCheckpoint(last)
    callbacks = [*extra_callbacks, telemetry, MetricsFileCallback(cfg.run_id, run_dir, store, telemetry),
                 # last.ckpt at every epoch end. Not save_last=True with save_top_k=0: since Lightning 2.6 that
                 # writes last.ckpt only when training ends, so a killed run would restart from scratch.
                 ModelCheckpoint(dirpath=ckpt_dir, filename="last", save_top_k=1, save_last=False,
                                 enable_version_counter=False),
                 preemption]
    monitor = f"probe/val/{cfg.probe.monitor}"
    if cfg.probe.every_n_epochs > 0:
        callbacks.append(ValProbeCallback(cfg, store, ckpt_dir / "best.ckpt"))
        if cfg.trainer.early_stopping_patience:
            callbacks.append(EarlyStopping(monitor=monitor, mode=cfg.probe.mode, check_on_train_epoch_end=False,
                                           patience=int(cfg.trainer.early_stopping_patience)))
    progress = progress_callback(cfg.probe.every_n_epochs)
    callbacks.append(progress)
    # The Trainer resolves the cluster environment (local DDP launcher, Slurm, torchrun) and this process's global
    # rank without launching anything; the logger is attached afterwards, on rank 0 only.
    try:
        trainer = pl.Trainer(logger=False, callbacks=callbacks, enable_progress_bar=isinstance(progress, EpochBar),
                             enable_model_summary=False, plugins=[AtomicCheckpointIO()],
                             default_root_dir=str(run_dir), **_trainer_settings(cfg))
    except (ValueError, MisconfigurationException) as e:  # e.g. trainer.strategy unknown, or no such accelerator
        raise UsageError(f"the trainer settings cannot be used here: {first_line(e, 300)}") from None
    rank0 = trainer.global_rank == 0
    if _LAUNCHED_RANKS and trainer.world_size > 1:
        raise UsageError("trainer.strategy=ddp starts the other ranks by running this command again, so one command "
                         "can train one DDP run; for several runs in one command use trainer.strategy=ddp_spawn, "
                         "or run `infmask pretrain` / `infmask trial` once per run")
    # One writer per run: rank 0 holds the run from the skip check to the end of fit (other ranks write nothing).
    with run_lock(ws, cfg.run_id, "pretrain") if rank0 else nullcontext():
        previous = store.get_run(cfg.run_id)
        if previous and previous["status"] == "finished" and kept.exists() and not force:
            print(f"{cfg.run_id}: already pretrained ({kept}); skipping (use --force to retrain)")
            return PretrainResult(cfg.run_id, run_dir, "finished", skipped=True)
        if last.exists() and not force:
            _check_resumable(last, cfg, store if rank0 and previous else None)
        return _train(cfg, ws, store, trainer, preemption, run_dir=run_dir, previous=previous, force=force,
                      sweep_id=sweep_id, keep_wandb_open=keep_wandb_open, stage=stage, wandb_run_id=wandb_run_id)


def _check_resumable(last: Path, cfg, store) -> None:
    """A damaged last.ckpt is a usage error naming the file and what to do (not a traceback inside fit, with the
    run left `running`): the run is marked failed."""
    import torch

    try:
        ckpt = torch.load(last, map_location="cpu", weights_only=True)
        why = None if isinstance(ckpt, dict) and "state_dict" in ckpt and "loops" in ckpt else \
            "not a Lightning checkpoint with training state"
    except Exception as e:  # truncated, corrupt, or not a checkpoint at all
        why = f"{type(e).__name__}: {first_line(e)}"
    if why is None:
        return
    if store is not None:
        store.set_status(cfg.run_id, "failed", f"damaged checkpoint {last}: {why}")
    raise UsageError(f"{last} is damaged ({why}); this run cannot resume from it. Move it aside (mv {last} "
                     f"{last}.damaged) to train the run again from the start, or rerun with --force")


def _train(cfg, ws: Workspace, store: ResultsStore, trainer, preemption, *, run_dir: Path, previous: dict | None,
           force: bool, sweep_id: str | None, keep_wandb_open: bool, stage: str = "pretrain",
           wandb_run_id: str | None = None) -> PretrainResult:
    import pytorch_lightning as pl
    import torch
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from infmask.models.methods import NonFiniteLossError, build_method

    from ..callbacks import PreemptionRequested
    from ..tracking import code_version, scrub, wandb_id
    from .data_stages import datamodule_for, ensure_data

    global _LAUNCHED_RANKS
    rank0 = trainer.global_rank == 0
    ckpt_dir = checkpoint_dir(run_dir)
    last = ckpt_dir / "last.ckpt"
    # the data first: a run that cannot get its data (credentials, a bad file) leaves no run directory behind
    with _exclusive(ws.root / "locks" / "ensure_data.lock"):
        ensure_data(cfg, ws)
    salt = ""
    if rank0:
        if force and run_dir.exists():
            shutil.rmtree(run_dir)
            salt = f"-{int(time.time())}"
            store.delete_metrics(cfg.run_id)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml",
                          __import__("yaml").safe_dump(scrub(cfg.to_dict()), sort_keys=False))

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    dm = datamodule_for(cfg, ws)
    model = build_method(cfg.to_dict())
    dm.ssl_inputs = model.batch_inputs
    if hasattr(dm, "pin_memory") and _root_device_type(trainer) == "cuda":
        dm.pin_memory = True  # page-locked batches: the copy to the GPU runs asynchronously, beside the host
    if trainer.world_size > 1:
        # Same initial weights on every rank (and DDP broadcasts rank 0's anyway); from here on the augmentation and
        # masking draws differ per rank, or every rank would apply the same crops and masks to its own samples. The
        # sampler's shuffle seed (PL_GLOBAL_SEED, set by seed_everything) stays shared, as sharding requires.
        torch.manual_seed(cfg.seed + trainer.global_rank)

    logger = False
    resume_id = None
    if rank0:
        resume_id = (previous or {}).get("wandb_run_id") if last.exists() and not force else None
        resume_id = wandb_run_id or resume_id or wandb_id(cfg, stage, salt)
        logger, resume_id = _start_logger(cfg, ws, resume_id, stage)
        if logger:
            trainer.logger = logger
    if cfg.trainer.compile:
        print(f"torch.compile: {model.compile_encoders()} encoders compiled (first steps are slower)", flush=True)

    if rank0:
        store.upsert_run(cfg, status="running", run_dir=str(run_dir), code_version=code_version(),
                         wandb_run_id=resume_id if logger else None, sweep_id=sweep_id)
        print(f"{cfg.run_id}: training {trainer.max_epochs} epochs on {_describe_device(trainer)}", flush=True)

    # --force starts afresh on every rank (rank 0 deleted last.ckpt, other ranks may not have seen it go yet)
    ckpt_path = str(last) if last.exists() and not force else None
    if ckpt_path and rank0:
        print(f"{cfg.run_id}: resuming from {last}")
    signum = None
    preemption.install()
    try:
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
        _LAUNCHED_RANKS = _LAUNCHED_RANKS or bool(getattr(trainer.strategy.launcher, "procs", None))
    except PreemptionRequested as e:  # every rank, after the same batch, last.ckpt saved (see PreemptionCheckpoint)
        signum = e.signum
    except SIGTERMException:  # a SIGTERM Lightning's handler caught before training started: nothing new to save
        signum = signal.SIGTERM
    except NonFiniteLossError as e:
        trainer.save_checkpoint(ckpt_dir / "failed.ckpt", weights_only=False)
        if not rank0:
            return PretrainResult(cfg.run_id, run_dir, "worker")
        store.set_status(cfg.run_id, "failed", str(e))
        _finish(logger, exit_code=1)
        raise RunFailed(f"{cfg.run_id}: {e}; state saved to {ckpt_dir / 'failed.ckpt'}") from None
    finally:
        preemption.uninstall()
    # A signal after the last training batch lets fit end normally: the run is finished, not preempted.
    if signum is not None:
        if not rank0:
            print(f"{cfg.run_id}: rank {trainer.global_rank} stopped by signal {signum}", file=sys.stderr)
            return PretrainResult(cfg.run_id, run_dir, "worker")
        store.set_status(cfg.run_id, "preempted", f"signal {signum}")
        if logger:
            try:
                logger.experiment.mark_preempting()
            except Exception:
                pass
        _finish(logger, exit_code=128 + signum)
        raise Preempted(signum)
    if not rank0:  # DDP workers stop here: rank 0 records the run and runs the probe
        return PretrainResult(cfg.run_id, run_dir, "worker")
    best = ckpt_dir / "best.ckpt"
    kept = final_checkpoint(run_dir, cfg)
    if kept == best and not best.exists():  # no per-epoch probe: the last epoch is the best we know
        weights_only_copy(last, best)
    store.set_status(cfg.run_id, "finished")
    _keep_one_checkpoint(kept, ckpt_dir)
    if preemption.signum is not None:
        # Signalled after the last training batch (e.g. during the final validation probe): the run is complete
        # and recorded as such, but the process still stops, so `run`/`trial` do not start more work.
        _finish(logger, exit_code=128 + preemption.signum)
        raise Preempted(preemption.signum)
    if not keep_wandb_open:
        _finish(logger)
    return PretrainResult(cfg.run_id, run_dir, "finished", wandb_logger=logger)


# What a weights-only checkpoint keeps of Lightning's full one: enough to probe it and to know what it is.
WEIGHTS_KEYS = ("state_dict", "infmask_config", "epoch", "global_step", "pytorch-lightning_version")


def weights_only_copy(src: Path, dst: Path) -> None:
    """`dst` = `src` without optimiser, scheduler, loop and callback state, written atomically. Read back from our
    own file (no collective call, so it is safe on DDP's rank 0 after the other ranks have left)."""
    import torch

    from ..callbacks import AtomicCheckpointIO

    full = torch.load(src, map_location="cpu", weights_only=True)
    AtomicCheckpointIO().save_checkpoint({k: full[k] for k in WEIGHTS_KEYS if k in full}, dst)


def _keep_one_checkpoint(kept: Path, ckpt_dir: Path) -> None:
    """A finished run cannot resume: keep the weights its probe reads and nothing else. Done after the store says
    `finished`, so a kill in between leaves a finished run with an extra file, never a run that resumes from a
    weights-only checkpoint."""
    if kept.name == "last.ckpt":
        weights_only_copy(kept, kept)
    for other in ("last.ckpt", "best.ckpt"):
        if other != kept.name:
            (ckpt_dir / other).unlink(missing_ok=True)


def _root_device_type(trainer) -> str | None:
    try:
        return trainer.strategy.root_device.type
    except Exception:  # a strategy that resolves its device only when it launches
        return None


def _describe_device(trainer) -> str:
    """`cpu, precision 32-true`: where the fit is about to run, in place of Lightning's availability lines."""
    try:
        device = trainer.strategy.root_device
        where = f"{device.type}{'' if device.index is None else f':{device.index}'}"
    except Exception:  # a strategy that resolves its device only when it launches
        where = str(trainer.accelerator.__class__.__name__).removesuffix("Accelerator").lower()
    if trainer.world_size > 1:
        strategy = type(trainer.strategy).__name__.removesuffix("Strategy").lower()
        where = f"{trainer.world_size} processes on {where.split(':')[0]} ({strategy})"
    return f"{where}, precision {trainer.precision}"


def _start_logger(cfg, ws, resume_id: str, stage: str = "pretrain", attempts: int = 4, wait_s: float = 3.0):
    """Create the W&B logger and its run now (not lazily inside fit). A W&B service shared with a killed process
    may still hold the run id ("run ID ... is in use"; the CLI gives each program its own service to avoid it):
    retry briefly, then continue under a fresh id rather than fail the resumed run."""
    from ..wandb_logger import make_logger

    for attempt in range(attempts):
        logger = make_logger(cfg, ws, stage, resume_id=resume_id)
        if not logger:
            return logger, resume_id
        try:
            logger.experiment  # noqa: B018  (starts the run)
            return logger, resume_id
        except Exception as e:
            if "in use" not in str(e):
                raise
            print(f"{cfg.run_id}: W&B run id {resume_id} still held by a previous process; waiting",
                  file=sys.stderr)
            if attempt == attempts - 2:
                resume_id = f"{resume_id}-{int(time.time())}"[-64:]
            else:
                time.sleep(wait_s)
    raise RuntimeError(f"could not start a W&B run for {cfg.run_id}")


def _finish(logger, exit_code: int = 0):
    if logger:
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=exit_code)


def pretrain_cli(args) -> int:
    cfg = build_config(args.benchmark, args.method, args.preset, seed=args.seed, overrides=args.overrides)
    if args.print_config:
        from ..config_sources import resolved_yaml
        from .show_config import header

        print(resolved_yaml(args.benchmark, args.method, args.preset, seed=args.seed, overrides=args.overrides,
                            header=header("pretrain", args, [args.benchmark, "--method", args.method,
                                                             "--preset", args.preset, *args.overrides])), end="")
        return 0
    ws = Workspace.open(args.root)
    print(f"infmask pretrain {cfg.run_id}: preset {cfg.preset}, workspace {ws.root}", flush=True)
    res = pretrain(cfg, ws, force=args.force)
    if res.status == "worker":  # a DDP rank > 0: rank 0 reports
        return 0
    from ..tracking import sync_hint

    print(f"{res.run_id}: {res.status} ({res.run_dir})")
    if (hint := sync_hint(ws)) and not res.skipped:
        print(hint)
    return 0
