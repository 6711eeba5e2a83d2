"""Resume: `kill -9` of a pretraining part-way (after an epoch completed, during the next one);
the same command then resumes from the last completed epoch and finishes: no epoch duplicated in metrics.jsonl,
the W&B run id unchanged, status `finished`."""
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import torch

from infmask.store import ResultsStore
from helpers.ddp_support import REPO, cli_env, smoke_workspace, wait_for

ARGS = ["pretrain", "trifeatures", "--preset", "smoke", "trainer.max_epochs=2", "probe.every_n_epochs=0"]


def test_sigkill_part_way_then_same_command_resumes_and_finishes(tmp_path, tmp_path_factory):
    ws, log = smoke_workspace(tmp_path_factory, tmp_path / "ws"), tmp_path / "first.log"
    cmd = [sys.executable, "-m", "infmask", *ARGS]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=cli_env(ws), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        # epoch 1 is complete (its line is in metrics.jsonl, last.ckpt holds it) and epoch 2 has begun
        text = wait_for(log, "epoch 2/2 batch 1/", proc)
        os.killpg(proc.pid, signal.SIGKILL)   # the whole process group, W&B's service included, as Slurm would
        assert proc.wait(timeout=60) == -signal.SIGKILL
    n_batches = int(re.search(r"epoch 1/2 batch 1/(\d+)", text).group(1))

    store = ResultsStore(ws / "results.sqlite")
    (run,) = store.query("SELECT * FROM runs")
    assert run["status"] == "running"   # nothing ran after the kill to say otherwise
    run_dir, first_wandb_id = Path(run["run_dir"]), run["wandb_run_id"]
    last = run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == n_batches
    epochs = [json.loads(ln)["epoch"] for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [0]

    again = subprocess.run(cmd, cwd=REPO, env=cli_env(ws), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert f"resuming from {last}" in again.stdout
    (run,) = store.query("SELECT * FROM runs")
    assert run["status"] == "finished" and run["wandb_run_id"] == first_wandb_id
    epochs = [json.loads(ln)["epoch"] for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [0, 1]                       # resumed from the completed epoch, none duplicated
    # finished: the resume state is gone, the weights of the last epoch are kept (no per-epoch probe: best = last)
    assert not last.exists()
    kept = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert kept["global_step"] == 2 * n_batches and "optimizer_states" not in kept
    # pretrain-stage W&B: the resumed process logged under the same run id (offline: one directory per process)
    dirs = sorted((ws / "wandb").glob("offline-run-*"))
    assert len(dirs) == 2 and {d.name.split("-", 3)[-1] for d in dirs} == {first_wandb_id}
    rows = store.query("SELECT DISTINCT step FROM metrics WHERE stage='pretrain' ORDER BY step")
    assert [r["step"] for r in rows] == [0, 1]
