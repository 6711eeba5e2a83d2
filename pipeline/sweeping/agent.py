"""What `wandb agent` does to start a trial, done the same way here: the parameter file, the argv from wandb's
own helpers, the environment, and which GPU each worker is pinned to."""
from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

from infmask.data.durable import atomic_path


def param_path(wandb_dir: str, sweep_id: str, run_id: str) -> str:
    """Where `wandb agent` writes a run's parameters (wandb_agent.Agent._command_run)."""
    return os.path.join(wandb_dir, "wandb", f"sweep-{sweep_id}", f"config-{run_id}.yaml")


def write_param_file(path: str, params: dict) -> None:
    """The agent's file (`wandb_version: 1`, then `name: {value: v}`, via wandb's config_util), written atomically."""
    from wandb.sdk.lib import config_util

    with atomic_path(Path(path)) as tmp:
        config_util.save_config_file_from_dict(str(tmp), {k: {"value": v} for k, v in params.items()})


def build_argv(command: list | None, program: str | None, params: dict, *, interpreter: str = sys.executable,
               args_json_file: str | None = None) -> list[str]:
    """The child command exactly as `wandb agent` builds it, but `${interpreter}` -> `interpreter`."""
    from wandb.sdk.launch.sweeps.utils import DEFAULT_SWEEP_COMMAND, create_sweep_command, create_sweep_command_args

    # create_sweep_command rewrites ${envvar:...} in place: give it a copy, never the config's list
    sweep_command = create_sweep_command([str(c) for c in (command or DEFAULT_SWEEP_COMMAND)])
    sweep_vars = create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    sweep_vars["interpreter"] = [interpreter]
    sweep_vars["program"] = [program]
    sweep_vars["args_json_file"] = [args_json_file]
    if platform.system() != "Windows":
        sweep_vars["env"] = ["/usr/bin/env"]
    if args_json_file and "${args_json_file}" in sweep_command:
        with open(args_json_file, "w") as fp:
            fp.write(sweep_vars["args_json"][0])
    argv: list[str] = []
    for c in sweep_command:
        c = str(c)
        if c.startswith("${") and c.endswith("}"):
            argv += sweep_vars.get(c[2:-1]) or []   # unknown macros expand to nothing, as in the agent
        else:
            argv.append(c)
    return argv


def build_env(base_env: dict, *, sweep_id: str, run_id: str, wandb_dir: str | None, project: str | None = None,
              entity: str | None = None) -> dict:
    """The child environment as `wandb agent` builds it (run_agent, Agent.__init__, _command_run, AgentProcess);
    writes nothing. WANDB_DIR: the caller's if set (the agent keeps it too), else `wandb_dir`."""
    env = dict(base_env)
    if entity:
        env["WANDB_ENTITY"] = entity
    if project:
        env["WANDB_PROJECT"] = project
    env["WANDB_SWEEP_ID"] = sweep_id
    if env.get("WANDB_DIR") is None:
        env["WANDB_DIR"] = os.path.abspath(wandb_dir or os.getcwd())
    env["WANDB_RUN_ID"] = run_id
    env["WANDB_SWEEP_PARAM_PATH"] = param_path(env["WANDB_DIR"], sweep_id, run_id)
    env.pop("WANDB_SERVICE", None)   # each child starts its own wandb-core
    return env


def trial_command(spec, *, sweep_id: str, run_id: str, params: dict, base_env: dict, wandb_dir: str,
                  interpreter: str = sys.executable) -> tuple[list[str], dict]:
    """argv and env for one trial of `spec` (a SweepSpec: its config and nothing else is read, so this module needs
    no import of spec.py, which imports it); writes the parameter file (and the args JSON file where `command`
    asks)."""
    env = build_env(base_env, sweep_id=sweep_id, run_id=run_id, wandb_dir=wandb_dir,
                    project=spec.config.get("project") or base_env.get("WANDB_PROJECT") or "infmask",
                    entity=spec.config.get("entity"))
    path = env["WANDB_SWEEP_PARAM_PATH"]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_param_file(path, params)
    argv = build_argv(spec.config.get("command"), spec.config.get("program"), params, interpreter=interpreter,
                      args_json_file=path[: -len(".yaml")] + ".json")
    env.setdefault("WANDB_MODE", "offline")
    return argv, env


# ============================================================================================ GPUs

def worker_gpus(env: dict, workers: int) -> list[str]:
    """Device ids to pin workers to, one each: empty (no pinning) unless several GPUs are visible and several
    workers run; a single worker keeps every GPU (so a trial may use DDP)."""
    if workers < 2:
        return []
    try:
        import torch
        n = torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no torch or no driver: nothing to pin
        n = 0
    if n < 2:
        return []
    visible = [s.strip() for s in (env.get("CUDA_VISIBLE_DEVICES") or "").split(",") if s.strip()]
    return visible[:n] if visible else [str(i) for i in range(n)]
