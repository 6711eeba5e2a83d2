"""`infmask agent-script`: one `wandb agent --forward-signals` per visible GPU, signals forwarded, agents awaited.
Run here with a fake `wandb` on PATH that records how it was started and what signal it got."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infmask.cli import main
from infmask.stages.sweep import agent_script

REPO = Path(__file__).resolve().parents[2]
FAKE_WANDB = """#!/usr/bin/env bash
echo "start $$ gpu=[${CUDA_VISIBLE_DEVICES-unset}] mode=$WANDB_MODE args=$*" >> "$AGENT_LOG"
trap 'echo "TERM $$" >> "$AGENT_LOG"; exit 143' TERM
trap 'echo "INT $$" >> "$AGENT_LOG"; exit 130' INT
while true; do sleep 0.05; done
"""


@pytest.fixture
def fake_path(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "wandb").write_text(FAKE_WANDB)
    (bin_dir / "wandb").chmod(0o755)
    # `python` must be one that imports infmask and wandb (the venv's); nvidia-smi must not be found
    # a wrapper, not a symlink: a symlinked interpreter does not find the venv's pyvenv.cfg
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "python").chmod(0o755)
    return f"{bin_dir}:/usr/bin:/bin"


STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_leftover_agents():
    yield
    while STARTED:   # a failed test must not leave the script or its fake agents looping
        proc = STARTED.pop()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def start(tmp_path, fake_path, script: str, **env) -> subprocess.Popen:
    path = tmp_path / "agents.sh"
    path.write_text(script)
    proc = subprocess.Popen(["bash", str(path)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True,
                            env={"PATH": fake_path, "AGENT_LOG": str(tmp_path / "agents.log"), "AGENT_STAGGER": "0",
                                 "HOME": str(tmp_path), **env})
    STARTED.append(proc)
    return proc


def log_lines(tmp_path) -> list[str]:
    p = tmp_path / "agents.log"
    return p.read_text().splitlines() if p.exists() else []


def wait_for(pred, timeout=20.0):
    t0 = time.time()
    while not pred():
        assert time.time() - t0 < timeout, "timed out"
        time.sleep(0.05)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_one_agent_per_gpu_and_signals_reach_every_agent(tmp_path, fake_path, signum):
    proc = start(tmp_path, fake_path, agent_script("me/infmask/abc123", count=4), CUDA_VISIBLE_DEVICES="0,3")
    wait_for(lambda: sum(line.startswith("start") for line in log_lines(tmp_path)) == 2)
    starts = [line for line in log_lines(tmp_path) if line.startswith("start")]
    assert sorted(line.split(" ", 2)[2] for line in starts) == [
        f"gpu=[{g}] mode=online args=agent --count 4 --forward-signals me/infmask/abc123" for g in ("0", "3")]
    proc.send_signal(signum)
    proc.communicate(timeout=20)
    got = [line.split()[0] for line in log_lines(tmp_path) if not line.startswith("start")]
    assert got == ["TERM", "TERM"]   # each agent got SIGTERM (SIGINT is ignored by background jobs), and the
    assert proc.returncode == 0      # script waited for them


def test_no_gpu_one_cpu_agent_and_no_count(tmp_path, fake_path):
    proc = start(tmp_path, fake_path, agent_script("proj/abc123"), CUDA_VISIBLE_DEVICES="")
    wait_for(lambda: log_lines(tmp_path))
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=20)[1]
    assert log_lines(tmp_path)[0].split(" ", 2)[2] == "gpu=[] mode=online args=agent --forward-signals proj/abc123"
    assert "no GPU visible" in err


def test_cli_prints_a_valid_bash_script(capsys):
    assert main(["agent-script", "ent/proj/swp1", "--count", "2"]) == 0
    script = capsys.readouterr().out
    assert script.startswith("#!/usr/bin/env bash") and "--count 2 --forward-signals" in script
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


@pytest.mark.parametrize("args", [["ent/proj/sw; rm -rf ~"], ["a/b/c/d"], ["ent/proj/sw", "--count", "0"]])
def test_bad_sweep_path_or_count_exits_2(capsys, args):
    assert main(["agent-script", *args]) == 2
    assert "error" in capsys.readouterr().err
