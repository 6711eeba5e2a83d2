"""One trial's record outside the store: its lock file (held by the runner and inherited by the trial
process), the result JSON it writes, and the status and metric read from them."""
from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

TRIAL_STATUSES = ("running", "finished", "failed", "preempted")


def read_result(path: Path) -> dict | None:
    """The trial's result JSON ({"run_id", "status", "metrics"}), or None if missing or unreadable."""
    try:
        res = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return res if isinstance(res, dict) else None


def outcome(returncode: int | None, result: dict | None, preempting: bool) -> str:
    """A trial's final status. A non-zero exit is never `finished`; a trial stopped by us is `preempted` (rerun on
    resume) unless it had already finished or said it failed."""
    status = (result or {}).get("status")
    if returncode == 0:
        return status if status in TRIAL_STATUSES and status != "running" else "finished"
    if status in ("failed", "preempted") and not preempting:
        return status
    if preempting or returncode in (130, 143, -signal.SIGTERM, -signal.SIGINT, -signal.SIGKILL):
        return "preempted"
    return "failed"


def metric_of(result: dict | None, name: str | None) -> float | None:
    value = ((result or {}).get("metrics") or {}).get(name) if name else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def best_trial(rows: list[dict], goal: str) -> dict | None:
    done = [r for r in rows if r["status"] == "finished" and r["metric_value"] is not None]
    if not done:
        return None
    pick = max if goal == "maximize" else min
    return pick(done, key=lambda r: r["metric_value"])


def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass
