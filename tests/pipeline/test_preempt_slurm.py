"""The Slurm templates' signal paths, run here with fake `srun` (runs the command as one task) and `scontrol`
(records the requeue). sweeps/slurm_ddp.sbatch: USR1 to the batch script (what `--signal=B:USR1@T` does) reaches
the run, which saves last.ckpt, is marked `preempted` and exits 138; the script requeues the job; the requeued
job's identical command resumes and finishes. sweeps/slurm_agents.sbatch: the array task starts
`wandb agent --count N --forward-signals` and turns the time-limit warning into SIGTERM for the agent."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from infmask.store import ResultsStore
from helpers.ddp_support import REPO, cli_env, smoke_workspace, wait_for

FAKE_SRUN = """#!/usr/bin/env bash
while [[ "${1:-}" == -* ]]; do shift; done   # drop srun's own options
exec "$@"
"""
FAKE_SCONTROL = """#!/usr/bin/env bash
echo "scontrol $*" >> "$SCONTROL_LOG"
"""
FAKE_WANDB = """#!/usr/bin/env bash
echo "wandb $* gpu=[${CUDA_VISIBLE_DEVICES-unset}] mode=$WANDB_MODE" >> "$AGENT_LOG"
trap 'echo "agent got TERM" >> "$AGENT_LOG"; exit 143' TERM
while true; do sleep 0.05; done
"""
TRIAL = ["--benchmark=trifeatures", "--method=infmasking", "--preset=smoke", "--seed=42",
         "--trainer.max_epochs=2", "--probe.every_n_epochs=0"]


def _fake_bin(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL), ("wandb", FAKE_WANDB)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir


def _slurm_env(ws: Path, bin_dir: Path, tmp_path: Path, **extra) -> dict:
    env = cli_env(ws)
    env.update(PATH=f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin", SLURM_JOB_ID="4242",
               SLURM_SUBMIT_DIR=str(REPO), SLURM_GPUS_ON_NODE="1", SLURM_NNODES="1", ACCELERATOR="cpu",
               SCONTROL_LOG=str(tmp_path / "scontrol.log"), AGENT_LOG=str(tmp_path / "agent.log"),
               VIRTUAL_ENV=str(Path(sys.executable).parent.parent), **extra)   # activated: fakes stay first
    return env


def test_slurm_ddp_template_usr1_saves_requeues_and_the_requeued_job_resumes(tmp_path, tmp_path_factory):
    ws = smoke_workspace(tmp_path_factory, tmp_path / "ws")
    bin_dir, log = _fake_bin(tmp_path), tmp_path / "job.log"
    cmd = ["bash", str(REPO / "sweeps" / "slurm_ddp.sbatch"), *TRIAL]
    with open(log, "w") as out:
        job = subprocess.Popen(cmd, cwd=tmp_path, env=_slurm_env(ws, bin_dir, tmp_path), stdout=out,
                               stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for(log, "epoch 1/2 batch 1/", job)
            job.send_signal(signal.SIGUSR1)          # to the batch script only, as --signal=B:USR1@180
            rc = job.wait(timeout=180)
        finally:
            if job.poll() is None:
                os.killpg(job.pid, signal.SIGKILL)
    text = log.read_text()
    assert rc == 128 + signal.SIGUSR1, text[-4000:]
    assert (tmp_path / "scontrol.log").read_text().split("\n")[0] == "scontrol requeue 4242"
    (run,) = ResultsStore(ws / "results.sqlite").query("SELECT * FROM runs")
    assert run["status"] == "preempted" and run["message"] == f"signal {int(signal.SIGUSR1)}"
    assert (Path(run["run_dir"]) / "checkpoints" / "last.ckpt").exists()

    # the requeued job: the same script, the same arguments
    again = subprocess.run(cmd, cwd=tmp_path, env=_slurm_env(ws, bin_dir, tmp_path, SLURM_RESTART_COUNT="1"),
                           capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert "resuming from" in again.stdout and "restart 1" in again.stderr
    store = ResultsStore(ws / "results.sqlite")
    (run,) = store.query("SELECT * FROM runs")
    assert run["status"] == "finished"
    assert store.query("SELECT 1 FROM metrics WHERE stage='probe' AND split='test'")   # probed on rank 0
    assert (tmp_path / "scontrol.log").read_text().count("requeue") == 1             # no second requeue


def test_slurm_agents_template_forwards_the_warning_to_the_agent(tmp_path):
    bin_dir = _fake_bin(tmp_path)
    env = _slurm_env(tmp_path / "ws", bin_dir, tmp_path, SLURM_ARRAY_JOB_ID="77", SLURM_ARRAY_TASK_ID="3",
                     CUDA_VISIBLE_DEVICES="0")
    env.pop("WANDB_MODE")
    job = subprocess.Popen(["bash", str(REPO / "sweeps" / "slurm_agents.sbatch"), "ent/proj/abc123"], cwd=tmp_path,
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)
    try:
        agent_log = tmp_path / "agent.log"
        wait_for(agent_log, "wandb agent", job, timeout=60)
        job.send_signal(signal.SIGUSR1)
        out, _ = job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    lines = agent_log.read_text().splitlines()
    assert lines[0] == "wandb agent --count 1 --forward-signals ent/proj/abc123 gpu=[0] mode=online", lines
    assert "agent got TERM" in lines
    assert job.returncode == 143, out
    assert (tmp_path / "scontrol.log").read_text().strip() == "scontrol requeue 77_3"


@pytest.mark.parametrize("script", ["slurm_ddp.sbatch", "slurm_agents.sbatch"])
def test_templates_parse_and_refuse_missing_arguments(tmp_path, script):
    assert subprocess.run(["bash", "-n", str(REPO / "sweeps" / script)]).returncode == 0
    run = subprocess.run(["bash", str(REPO / "sweeps" / script)], cwd=tmp_path, capture_output=True, text=True,
                         env=_slurm_env(tmp_path / "ws", _fake_bin(tmp_path), tmp_path), timeout=60)
    assert run.returncode == 2 and "pass" in run.stderr
