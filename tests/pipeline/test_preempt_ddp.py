"""Preemption under DDP (Slurm): SIGTERM to every process of a 2-rank CPU pretrain at once, as srun,
scancel and `kill -- -PGID` do (W&B's service process included). Every rank stops after the same batch without a
deadlock, last.ckpt holds the mid-epoch state, the run is `preempted`, rank 0 exits 143; rerunning the same
command resumes under DDP and finishes with each epoch once."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from infmask.store import ResultsStore
from helpers.ddp_support import REPO, cli_env, smoke_workspace, wait_for

ARGS = ["pretrain", "trifeatures", "--preset", "smoke", "trainer.max_epochs=2", "probe.every_n_epochs=0",
        "data.batch_size=8", "trainer.devices=2", "trainer.strategy=ddp", "trainer.accelerator=cpu"]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_ddp_every_rank_signalled_saves_once_and_resumes(tmp_path, tmp_path_factory, sig):
    ws, log = smoke_workspace(tmp_path_factory, tmp_path / "ws"), tmp_path / "first.log"
    cmd = [sys.executable, "-m", "infmask", *ARGS]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=cli_env(ws), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            wait_for(log, "epoch 1/2 batch 1/", proc, timeout=300)
            os.killpg(proc.pid, sig)
            rc = proc.wait(timeout=180)   # a deadlock shows up here
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    assert rc == 128 + sig, text[-4000:]
    assert "rank 1 stopped by signal" in text

    store = ResultsStore(ws / "results.sqlite")
    (run,) = store.query("SELECT * FROM runs")
    assert run["status"] == "preempted", dict(run)
    run_dir = Path(run["run_dir"])
    last = run_dir / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 0 and ckpt["global_step"] >= 1

    again = subprocess.run(cmd, cwd=REPO, env=cli_env(ws), capture_output=True, text=True, timeout=400,
                           start_new_session=True)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert f"resuming from {last}" in again.stdout
    (run,) = store.query("SELECT * FROM runs")
    assert run["status"] == "finished"
    epochs = [json.loads(ln)["epoch"] for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [0, 1]
    assert not last.exists()   # finished: only the weights-only checkpoint the probe reads is kept
    final = torch.load(last.with_name("best.ckpt"), map_location="cpu", weights_only=True)
    assert final["global_step"] > ckpt["global_step"]
