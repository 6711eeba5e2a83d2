"""Preemption: a signal to a running `infmask pretrain` mid-epoch saves
`last.ckpt` (the mid-epoch state), marks the run `preempted` in the results store, exits 128 + signal, and the
same command then resumes and finishes. SIGTERM is what Slurm and W&B agents send; SIGUSR1 is Slurm's
`--signal=USR1@T` warning before the time limit and takes the same path."""
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from infmask.store import ResultsStore
from helpers.ddp_support import REPO, cli_env, smoke_workspace, wait_for

# 4 batches an epoch at the smoke size; no per-epoch probe (the signal path is what is under test)
ARGS = ["pretrain", "trifeatures", "--preset", "smoke", "trainer.max_epochs=2", "probe.every_n_epochs=0"]


def _the_run(ws: Path) -> dict:
    runs = ResultsStore(ws / "results.sqlite").query("SELECT * FROM runs")
    assert len(runs) == 1, [dict(r) for r in runs]
    return dict(runs[0])


@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGUSR1, marks=pytest.mark.slow)],
                         ids=["SIGTERM", "SIGUSR1"])
def test_signal_mid_epoch_saves_marks_preempted_and_rerun_resumes(tmp_path, tmp_path_factory, sig):
    ws, log = smoke_workspace(tmp_path_factory, tmp_path / "ws"), tmp_path / "first.log"
    cmd = [sys.executable, "-m", "infmask", *ARGS]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=cli_env(ws), stdout=out, stderr=subprocess.STDOUT)
        # PlainProgress prints the first batch of each epoch (stderr is not a terminal): mid-epoch 1 of 2
        wait_for(log, "epoch 1/2 batch 1/", proc)
        proc.send_signal(sig)
        rc = proc.wait(timeout=120)
    text = log.read_text()
    assert rc == 128 + sig, text[-3000:]
    n_batches = int(re.search(r"epoch 1/2 batch 1/(\d+)", text).group(1))
    assert f"preempted by signal {int(sig)}" in text

    run = _the_run(ws)
    assert run["status"] == "preempted" and run["message"] == f"signal {int(sig)}"
    last = Path(run["run_dir"]) / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 0 and 1 <= ckpt["global_step"] < n_batches, (ckpt["global_step"], n_batches)
    assert not list(last.parent.glob("*.tmp"))   # atomic writes leave no temporaries

    again = subprocess.run(cmd, cwd=REPO, env=cli_env(ws), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert f"resuming from {last}" in again.stdout
    run = _the_run(ws)
    assert run["status"] == "finished"
    epochs = [json.loads(ln)["epoch"] for ln in (Path(run["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [0, 1]
    # finished: the resume state is deleted, the final weights kept without it (no per-epoch probe: best = last)
    assert not last.exists()
    final = torch.load(last.with_name("best.ckpt"), map_location="cpu", weights_only=True)
    # the interrupted epoch ran its remaining batches only (from a fresh shuffle: the loader is not resumable)
    assert final["global_step"] == 2 * n_batches and "optimizer_states" not in final
    # both processes logged to the same W&B run (resumed offline runs get a directory each, one run id)
    dirs = sorted((ws / "wandb").glob("offline-run-*"))
    assert len(dirs) == 2 and {d.name.split("-", 3)[-1] for d in dirs} == {run["wandb_run_id"]}
