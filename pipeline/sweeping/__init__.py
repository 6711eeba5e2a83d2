"""The embedded sweep runner: a W&B sweep file run here, offline, with W&B's own sweep engine.

`wandb agent` asks W&B's server for the next parameters; here the `sweeps` package (the engine behind that
server) suggests them from the trials recorded in the results store, and each trial is started the way a W&B
agent starts it: argv from wandb's own helpers (`create_sweep_command`, `create_sweep_command_args`, expanded as
in `wandb_agent.Agent._command_run`), the same environment (WANDB_SWEEP_ID, WANDB_RUN_ID, WANDB_SWEEP_PARAM_PATH
written by wandb's `config_util`, WANDB_DIR, WANDB_PROJECT, WANDB_SERVICE removed), its own process group, stdin
closed. So one sweep file and one trial program behave the same under `wandb agent` and `infmask sweep`.

Deliberate differences from the agent:
- `${interpreter}` is this Python (`sys.executable`), not `python` from PATH, so the runner works without
  activating the venv.
- WANDB_DIR defaults to the workspace root (the agent: the current directory); WANDB_MODE defaults to offline.
- The trial also gets INFMASK_ROOT, INFMASK_TRIAL_RESULT (where it writes its result JSON) and INFMASK_LOCAL_SWEEP=1
  (the sweep id exists only in this workspace, not on a W&B server).

Coordination lives in the results store (`sweep_trials`) plus one lock file per trial: a trial is claimed in a
single write transaction (so two runners on one sweep never start the same trial) and its lock is held by the
runner *and* inherited by the trial process, so a trial whose runner was killed still counts as running until
the trial itself exits. A "running" trial whose lock is free was orphaned: its result is adopted if it wrote one,
otherwise it is rerun with the same parameters and run id (as W&B requeues a preempted run).

Modules, each importing only those above it:
- `engine`: W&B's sweep engine, its suggestions and its types;
- `agent`: the parameter file, argv, environment and GPU pinning of a trial, as `wandb agent` makes them;
- `spec`: the sweep file, checked (`load_sweep`, `SweepSpec`);
- `command_check`: the sweep's trial command, run once in check mode before any trial starts;
- `trials`: a trial's lock file, result JSON, status and metric;
- `runner`: `SweepRunner` and `run_sweep` (`infmask sweep FILE`).
The trial rows themselves are read and written through the results store (pipeline/store.py).
"""
from .agent import build_argv, build_env, param_path, trial_command, worker_gpus, write_param_file
from .command_check import check_command
from .engine import load_engine, suggest, to_python, to_sweep_runs
from .runner import ID_PATTERN, Active, Claim, SweepRunner, run_sweep
from .spec import REPO_ROOT, SweepSpec, candidate_values, check_parameters, check_schema, load_sweep
from .trials import TRIAL_STATUSES, best_trial, metric_of, outcome, read_result

__all__ = [
    "build_argv", "build_env", "param_path", "trial_command", "worker_gpus", "write_param_file",
    "check_command",
    "load_engine", "suggest", "to_python", "to_sweep_runs",
    "ID_PATTERN", "Active", "Claim", "SweepRunner", "run_sweep",
    "REPO_ROOT", "SweepSpec", "candidate_values", "check_parameters", "check_schema", "load_sweep",
    "TRIAL_STATUSES", "best_trial", "metric_of", "outcome", "read_result",
]
