"""Helpers shared by the scale-out tests (test_ddp_*, test_preempt_*, test_resume_*); no tests here.

Generating the smoke Trifeatures data takes ~15 s, so it is made once per pytest session and hard-linked into each
test's workspace (the files are only read)."""
import fcntl
import os
import shutil
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RANK_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
             "SLURM_PROCID", "SLURM_NTASKS", "SLURM_JOB_ID")


def cli_env(ws: Path) -> dict:
    """The environment of an `infmask` subprocess: this workspace, offline W&B, no outer launcher's rank variables
    (they would make the process think it is a DDP worker)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("WANDB_SWEEP", "WANDB_RUN", "INFMASK_")) and k not in RANK_VARS}
    env.update(INFMASK_ROOT=str(ws), WANDB_MODE="offline", PYTHONUNBUFFERED="1")
    return env


def smoke_workspace(tmp_path_factory, ws: Path) -> Path:
    """`ws` holding the smoke Trifeatures data (raw + processed), generated once per session."""
    from infmask.config import build_config
    from infmask.stages.data_stages import ensure_data
    from infmask.workspace import Workspace

    cache = tmp_path_factory.getbasetemp() / "scaleout-smoke-data"
    cache.mkdir(exist_ok=True)
    with open(cache / ".lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        if not (cache / ".done").exists():
            ensure_data(build_config("trifeatures", "infmasking", "smoke", seed=42), Workspace.open(cache))
            (cache / ".done").touch()
    ws.mkdir(parents=True, exist_ok=True)
    for part in ("raw", "processed"):
        shutil.copytree(cache / part, ws / part, copy_function=os.link)
    return ws


def wait_for(log: Path, text: str, proc: subprocess.Popen, timeout: float = 240.0) -> str:
    """Poll a subprocess's log file until `text` appears; fail early if the process exits first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        content = log.read_text(errors="replace") if log.exists() else ""
        if text in content:
            return content
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} before '{text}':\n{content[-4000:]}")
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"no '{text}' within {timeout} s:\n{log.read_text(errors='replace')[-4000:]}")
