"""One writer per run directory.

`pretrain` holds the run's lock from its skip check to the end of fit, `probe` while it probes, so the same run
started twice (a Slurm requeue while the first job still runs, two terminals) never trains twice into one folder:
the second process stops at once with a usage error (exit 2) naming the process that holds the run. `infmask run`
instead moves on to its next run and comes back to a held one at the end, so several of them (its `--jobs`, or
two terminals) share one grid. The lock is an flock on `<root>/locks/runs/<run id>.lock`, outside the run directory
(which `--force` deletes), and dies with its process, so a killed run never leaves a stale lock behind. The sweep
runner's trial locks use the same non-blocking probes (`try_lock`, `lock_is_free`).
"""
from __future__ import annotations

import fcntl
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from .errors import UsageError


class RunInProgress(UsageError):
    """Another process holds the run."""


def lock_path(ws, run_id: str) -> Path:
    return ws.root / "locks" / "runs" / f"{run_id}.lock"


@contextmanager
def run_lock(ws, run_id: str, stage: str):
    """Hold ``run_id`` for the block, or raise RunInProgress when another process holds it."""
    path = lock_path(ws, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
            raise RunInProgress(f"run {run_id} is in progress ({holder}); wait for it to finish or stop it, then "
                                "rerun this command") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{stage} by pid {os.getpid()} on {socket.gethostname()} since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock


def try_lock(path: Path):
    """An exclusive flock on `path` (created if missing), or None if another process holds it (a run, or a sweep
    trial and its runner)."""
    f = open(path, "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


def lock_is_free(path: Path) -> bool:
    f = try_lock(path)
    if f is None:
        return False
    f.close()
    return True


def wait_until_free(ws, run_id: str, poll_s: float = 2.0) -> None:
    """Block until no process holds ``run_id``. Polls rather than blocking in flock, so Ctrl-C stops the wait."""
    path = lock_path(ws, run_id)
    while path.exists() and not lock_is_free(path):
        time.sleep(poll_s)
