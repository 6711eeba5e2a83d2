"""`infmask sweep FILE` (the embedded runner, pipeline/sweeping/) and `infmask agent-script ENTITY/PROJECT/SWEEP`
(one `wandb agent` per GPU, for sweeps created on a W&B server with `wandb sweep FILE`)."""
from __future__ import annotations

import re

from ..errors import UsageError


def sweep_cli(args) -> int:
    from ..sweeping import run_sweep

    # --retry-failed is not in the parser yet; the runner supports it (rerun failed trials once)
    return run_sweep(args.file, args.root, sweep_id=args.sweep_id, count=args.count, workers=args.workers,
                     retry_failed=bool(getattr(args, "retry_failed", False)))


def agent_script_cli(args) -> int:
    print(agent_script(args.sweep_path, args.count), end="")
    return 0


SWEEP_PATH = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+){0,2}$")


def agent_script(sweep_path: str, count: int | None = None) -> str:
    """A bash script starting one `wandb agent --forward-signals` per visible GPU, each with its own
    CUDA_VISIBLE_DEVICES, forwarding SIGTERM/SIGINT to the agents and waiting for them. The GPUs are found when
    the script runs (on the compute node), not when it is written."""
    if not SWEEP_PATH.match(sweep_path or ""):
        raise UsageError(f"sweep path '{sweep_path}': expected ENTITY/PROJECT/SWEEP_ID as printed by `wandb sweep`")
    if count is not None and count < 1:
        raise UsageError(f"--count must be >= 1, got {count}")
    count_arg = f" --count {count}" if count is not None else ""
    return f"""#!/usr/bin/env bash
# One W&B agent per visible GPU for sweep {sweep_path} (written by `infmask agent-script`).
# Run it from the infmask repository root with the venv activated: the sweep's ${{interpreter}} is the `python`
# on PATH and its command is `python -m infmask trial ...`. GPUs: $CUDA_VISIBLE_DEVICES if set (Slurm sets it),
# else every GPU nvidia-smi lists; none: one agent on the CPU. SIGTERM or SIGINT (Ctrl-C) reaches every agent as
# SIGTERM, which it passes on to its run (--forward-signals); the run saves last.ckpt and exits 143, and the script
# waits for the agents.
set -euo pipefail
SWEEP="{sweep_path}"
export WANDB_MODE="${{WANDB_MODE:-online}}"   # infmask logs offline by default; a server sweep needs its runs online
{{ python -c 'import infmask, wandb' 2>/dev/null && [[ -f pipeline/__main__.py ]]; }} || {{
  echo "agent-script: run from the infmask repository root with its venv activated" >&2; exit 2; }}
if [[ -n "${{CUDA_VISIBLE_DEVICES+set}}" ]]; then   # set, even empty (no GPU), wins
  IFS=',' read -ra GPUS <<< "$CUDA_VISIBLE_DEVICES"
elif command -v nvidia-smi >/dev/null 2>&1; then
  mapfile -t GPUS < <(nvidia-smi --query-gpu=index --format=csv,noheader)
else
  GPUS=()
fi
((${{#GPUS[@]}})) || {{ GPUS=(""); echo "agent-script: no GPU visible; one agent on the CPU" >&2; }}
PIDS=()
STOP=
# Background jobs of a script start with SIGINT ignored (no job control), so both signals go on as SIGTERM;
# each new signal moves the agents one step on (wait for runs -> terminate runs -> kill runs).
forward() {{ STOP=1; ((${{#PIDS[@]}})) && kill -TERM "${{PIDS[@]}}" 2>/dev/null || true; }}
trap forward TERM INT
for gpu in "${{GPUS[@]}}"; do
  [[ -z "$STOP" ]] || break
  CUDA_VISIBLE_DEVICES="$gpu" wandb agent{count_arg} --forward-signals "$SWEEP" &
  PIDS+=($!)
  echo "agent-script: agent $! on GPU ${{gpu:-none}}" >&2
  sleep "${{AGENT_STAGGER:-2}}"   # stagger: agents started together can race for the same requeued run
done
until wait; do :; done   # `wait` returns early when a trapped signal arrives: forward it, keep waiting
"""
