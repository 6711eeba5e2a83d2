"""One writer per run directory (pipeline/run_lock.py): the same `pretrain` started twice at once trains once."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest

from infmask.errors import UsageError
from infmask.store import ResultsStore
from infmask.workspace import Workspace
from helpers.ddp_support import REPO, cli_env, smoke_workspace

ARGS = ["pretrain", "trifeatures", "--preset", "smoke", "trainer.max_epochs=2", "probe.every_n_epochs=0"]
pytestmark = pytest.mark.timeout(600)


def test_same_pretrain_started_twice_at_once_trains_once(tmp_path, tmp_path_factory):
    # A Slurm requeue while the first job still runs, two terminals, two `infmask run` over one grid.
    ws = smoke_workspace(tmp_path_factory, tmp_path / "ws")
    cmd = [sys.executable, "-m", "infmask", *ARGS]
    procs = [subprocess.Popen(cmd, cwd=REPO, env=cli_env(ws), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=500) for p in procs]
    codes = sorted(p.returncode for p in procs)
    text = "\n".join(o + e for o, e in outs)
    trained = [i for i, (o, _) in enumerate(outs) if ": finished (" in o and "skipping" not in o]
    assert len(trained) == 1, text[-4000:]
    other = 1 - trained[0]
    # the other one stopped at once ("in progress", exit 2), or, had it come after the first had finished, skipped
    assert codes == [0, 2] and "is in progress" in outs[other][1] or \
        codes == [0, 0] and "already pretrained" in outs[other][0], text[-4000:]
    (run,) = ResultsStore(ws / "results.sqlite").query("SELECT * FROM runs")
    assert run["status"] == "finished"
    lines = [json.loads(ln) for ln in (ws / "runs").rglob("metrics.jsonl").__next__().read_text().splitlines()]
    assert [ln["epoch"] for ln in lines] == [0, 1]  # each epoch once
    assert len(list((ws / "wandb").glob("offline-run-*"))) == 1  # one W&B run, not two under one id


def test_a_held_run_names_its_holder(tmp_path):
    from infmask.run_lock import run_lock

    ws = Workspace.open(tmp_path / "ws")
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]);"
            "from infmask.workspace import Workspace; from infmask.run_lock import run_lock;"
            "ws = Workspace.open(sys.argv[2])\n"
            "with run_lock(ws, 'bench-m-h-s1', 'pretrain'):\n print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(REPO), str(ws.root)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UsageError, match=rf"run bench-m-h-s1 is in progress \(pretrain by pid {holder.pid}"):
            with run_lock(ws, "bench-m-h-s1", "probe"):
                pass
    finally:
        holder.kill()
        holder.wait()
    t0 = time.monotonic()
    with run_lock(ws, "bench-m-h-s1", "probe"):  # a killed holder leaves no stale lock
        assert time.monotonic() - t0 < 5


def test_run_with_two_jobs_shares_the_grid_and_trains_each_run_once(tmp_path, tmp_path_factory):
    # `--jobs 2` is a second `infmask run` over the same grid: the two skip what the other holds
    ws = smoke_workspace(tmp_path_factory, tmp_path / "ws")
    cmd = [sys.executable, "-m", "infmask", "run", "trifeatures", "--preset", "smoke", "--seeds", "42",
           "--methods", "cross,comm", "--jobs", "2", "trainer.max_epochs=1", "probe.every_n_epochs=0"]
    proc = subprocess.run(cmd, cwd=REPO, env=cli_env(ws), capture_output=True, text=True, timeout=500)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-4000:]
    assert re.search(r"2 runs at a time, \d+ threads? each", text), text[-4000:]
    trained = [ln for ln in proc.stdout.splitlines() if ": training 1 epochs" in ln]
    assert len(trained) == 4, text[-4000:]  # four runs (2 methods x 2 data variants), each trained once
    assert sum(ln.startswith("job 2: ") for ln in trained) >= 1, text[-4000:]  # the second job took its share
    runs = ResultsStore(ws / "results.sqlite").query("SELECT * FROM runs")
    assert sorted(r["status"] for r in runs) == ["finished"] * 4
    for metrics in (ws / "runs").rglob("metrics.jsonl"):
        assert [json.loads(ln)["epoch"] for ln in metrics.read_text().splitlines()] == [0]
    assert "### Trifeatures" in proc.stdout  # the table once both are done


def test_run_jobs_and_force_are_refused_together(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "infmask", "run", "trifeatures", "--jobs", "2", "--force",
                           "--root", str(tmp_path / "ws")], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and "--force cannot be combined with --jobs" in proc.stderr
    assert not (tmp_path / "ws").exists()


@pytest.mark.slow  # 16 s; the default suite is near its 10-minute budget on 2 cores
def test_stopping_run_with_jobs_stops_every_job_and_each_saves_its_run(tmp_path, tmp_path_factory):
    ws = smoke_workspace(tmp_path_factory, tmp_path / "ws")
    cmd = [sys.executable, "-m", "infmask", "run", "trifeatures", "--preset", "smoke", "--seeds", "42",
           "--methods", "cross", "--jobs", "2", "trainer.max_epochs=400", "probe.every_n_epochs=0"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=cli_env(ws), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines = []
    try:
        for line in proc.stdout:  # both jobs training: one line each
            lines.append(line)
            if sum(": training 400 epochs" in ln for ln in lines) == 2:
                break
        time.sleep(2)
        proc.terminate()
        out = "".join(lines) + proc.stdout.read()
        assert proc.wait(timeout=120) == 143, out[-4000:]
    finally:
        proc.kill()
    assert "job 2: " in out
    runs = ResultsStore(ws / "results.sqlite").query("SELECT * FROM runs")
    assert sorted(r["status"] for r in runs) == ["preempted"] * 2, out[-4000:]  # both saved their state
    assert subprocess.run(["pgrep", "-f", str(ws)], capture_output=True).stdout == b""  # no job left running
