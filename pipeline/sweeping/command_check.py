"""The command a sweep file makes every trial run, checked before the first trial starts.

A sweep file's `command:` (W&B's default when it has none: `${env} ${interpreter} ${program} ${args}`) is expanded
exactly as for a trial, with the parameters' first values. A command that starts infmask must reach its `trial`
stage (`infmask trial ...`, `python -m infmask trial ...`, `python -m pipeline trial ...` from a checkout, or `pipeline/__main__.py --benchmark=...`, which is a
trial too) and pass the parameters; it is then run once with INFMASK_TRIAL_CHECK=1, so the very argv, environment
and directory of a trial parse and validate the config and exit without training. Other programs are the user's:
only their file is checked.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from ..errors import UsageError
from .agent import trial_command
from .spec import candidate_values

TRIAL_COMMAND = ["${env}", "${interpreter}", "-m", "infmask", "trial", "${args}"]
PARAMETER_MACROS = ("${args}", "${args_no_hyphens}", "${args_json}", "${args_json_file}")
HINT = "write `command: [${env}, ${interpreter}, -m, infmask, trial, ${args}]` (as a block list, as in sweeps/*.yaml)"


def pipeline_entry(argv: list[str], cwd: Path) -> int | None:
    """Index just after the token that starts infmask in `argv` (`-m infmask`, `-m pipeline`,
    pipeline/__main__.py or the `infmask` script), or None when the command runs another program."""
    for i, arg in enumerate(argv):
        if arg == "-m" and i + 1 < len(argv) and argv[i + 1] in ("infmask", "pipeline"):
            return i + 2
        path = Path(arg)
        if path.name == "infmask" or path.parts[-2:] == ("pipeline", "__main__.py"):
            return i + 1
    return None


def _first_values(params: dict) -> dict:
    return {name: candidate_values(spec)[0] for name, spec in params.items() if candidate_values(spec)}


def check_command(spec, timeout: float = 120.0) -> None:
    """Raise UsageError (exit 2, before any trial) when the sweep's trial command cannot run a trial."""
    from wandb.sdk.launch.sweeps.utils import DEFAULT_SWEEP_COMMAND

    src = str(spec.path)
    command = [str(c) for c in (spec.config.get("command") or DEFAULT_SWEEP_COMMAND)]
    program = spec.config.get("program")
    if "${program}" in command:
        if not program:
            raise UsageError(f"{src}: the command uses ${{program}} but the file names no `program`")
        if not (spec.cwd / str(program)).exists():
            raise UsageError(f"{src}: program '{program}' not found in {spec.cwd} or the folders above the file")
    with tempfile.TemporaryDirectory(prefix="infmask-sweep-check-") as tmp:
        argv, env = trial_command(spec, sweep_id="command-check", run_id="command-check",
                                  params=_first_values(spec.config["parameters"]), base_env=dict(os.environ),
                                  wandb_dir=tmp)
        at = pipeline_entry(argv, spec.cwd)
        if at is None:
            return
        stage = argv[at] if at < len(argv) else ""
        if stage != "trial" and "=" not in stage:
            raise UsageError(f"{src}: the command runs `infmask {stage}`, not a trial (`infmask trial`, pretrain + "
                             f"probe of one config, is what a sweep runs); {HINT}")
        if not any(m in command for m in PARAMETER_MACROS):
            raise UsageError(f"{src}: the command passes no parameters to the trial (no ${{args}}); {HINT}")
        from ..trial_argv import CHECK_ENV, CHECK_PASSED

        env.update({CHECK_ENV: "1", "INFMASK_ROOT": str(Path(tmp) / "workspace")})
        try:
            out = subprocess.run(argv, cwd=spec.cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                                 text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise UsageError(f"{src}: the trial command cannot start ({' '.join(argv)}): {e}; {HINT}") from None
    if out.returncode != 0 or CHECK_PASSED not in out.stdout:
        lines = [ln for ln in (out.stderr or out.stdout).splitlines() if ln.strip()]
        why = lines[-1].strip() if lines else f"exit code {out.returncode}"
        raise UsageError(f"{src}: the trial command fails before training ({' '.join(argv)}): {why}; {HINT}")

