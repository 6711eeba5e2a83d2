"""`infmask trial --benchmark=B --method=M --preset=P --seed=S --model.mask_ratio=0.5 ...`: the unit a W&B sweep
agent runs. Pretrain + probe of one config inside ONE W&B run (the agent's run id), the sweep metric logged at
top level with its summary. Hyper-parameters come from argv, which carries the same values as wandb.config.

Exit codes: 0 finished; 1 failed; 2 bad parameters; 128+N preempted by signal N (SIGTERM: 143), after saving
last.ckpt and finishing the W&B run. If $INFMASK_TRIAL_RESULT names a file, a JSON summary is written there
(the embedded sweep runner reads it)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from infmask.data.durable import atomic_write_text

from ..errors import InfmaskError, Preempted
from ..trial_argv import CHECK_ENV, CHECK_PASSED, parse_trial_argv, trial_arguments
from ..workspace import Workspace


def _write_result(status: str, run_id: str | None, metrics: dict):
    path = os.environ.get("INFMASK_TRIAL_RESULT")
    if path:
        atomic_write_text(Path(path), json.dumps({"run_id": run_id, "status": status, "metrics": metrics}))


def trial_cli(args) -> int:
    cfg, spec = parse_trial_argv(args.argv)
    if getattr(args, "print_config", False):
        from ..config_sources import resolved_yaml
        from .show_config import header

        benchmark, method, preset, ov = trial_arguments(args.argv)
        print(resolved_yaml(benchmark, method, preset, overrides=ov,
                            header=header("trial", args, list(args.argv))), end="")
        return 0
    # `infmask sweep` trying the command it will run (pipeline/sweeping/command_check.py)
    if os.environ.get(CHECK_ENV) == "1":
        print(f"{CHECK_PASSED} {cfg.run_id}")
        return 0
    ws = Workspace.open(args.root)
    sweep_id = os.environ.get("WANDB_SWEEP_ID")
    # The agent's run id (W&B's, or the trial id `infmask sweep` gives): the W&B run's id and folder name.
    agent_run_id = os.environ.get("WANDB_RUN_ID") or None
    print(f"infmask trial {cfg.run_id}: pretrain + probe, preset {cfg.preset}, workspace {ws.root}"
          + (f", sweep {sweep_id} run {agent_run_id}" if sweep_id else ""), flush=True)
    if os.environ.get("INFMASK_LOCAL_SWEEP") == "1" and sweep_id:
        # The embedded runner's sweep id exists on no W&B server, and `wandb sync` refuses runs that name an
        # unknown sweep: keep it as a tag (and in the results store) instead, so the offline runs sync. The
        # parameter file stays: wandb adds its flat keys (model.mask_ratio) to the run's config, as under an agent.
        os.environ.pop("WANDB_SWEEP_ID")
        cfg.tracking.tags = [*cfg.tracking.tags, f"sweep:{sweep_id}"]
    import wandb

    from .pretrain import pretrain
    from .probe import probe

    try:
        res = pretrain(cfg, ws, sweep_id=sweep_id, keep_wandb_open=True, stage="trial", wandb_run_id=agent_run_id)
        if res.status == "worker":
            return 0
        metrics = probe(res.run_dir / "checkpoints" / f"{cfg.probe.checkpoint}.ckpt", ws, force=True,
                        keep_wandb_run=wandb.run)
    except Preempted as e:
        _write_result("preempted", cfg.run_id, {})
        raise e
    except InfmaskError:
        _write_result("failed", cfg.run_id, {})
        raise
    except BaseException:
        _write_result("failed", cfg.run_id, {})
        if wandb.run is not None:
            wandb.finish(exit_code=1)
        raise
    name = (spec.get("sweep_metric") or {}).get("name", f"probe/val/{cfg.probe.monitor}")
    if wandb.run is not None:
        wandb.run.summary[name] = metrics.get(name)
        wandb.finish()
    _write_result("finished", cfg.run_id, metrics)
    print(f"{cfg.run_id}: {name}={metrics.get(name)}")
    return 0
