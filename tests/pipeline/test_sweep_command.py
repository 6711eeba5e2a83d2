"""The command a sweep file makes each trial run: a file written as W&B documents it (no `command:`) runs trials,
and `infmask sweep` refuses, before any trial starts, a command that cannot run one."""
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from infmask.cli import main
from infmask.store import ResultsStore
from infmask.sweeping import load_sweep, trial_command

REPO = Path(__file__).resolve().parents[2]


def write(path: Path, command=None, program="pipeline/__main__.py", **params) -> Path:
    """A smoke grid over two mask ratios, next to the repository's own sweep files' layout."""
    config = {"program": program, "name": "smoke-check", "method": "grid",
              "metric": {"name": "probe/val/acc1", "goal": "maximize"},
              "parameters": {"benchmark": {"value": "trifeatures"}, "method": {"value": "infmasking"},
                             "preset": {"value": "smoke"}, "seed": {"value": 42},
                             "model.mask_ratio": {"values": [0.5, 0.7]}, **params}}
    if command is not None:
        config["command"] = command
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture
def sweep_dir(tmp_path, monkeypatch):
    """Sweep files beside a link to the repository's pipeline/, as a user's sweep folder inside a checkout."""
    (tmp_path / "pipeline").symlink_to(REPO / "pipeline")
    for key in ("WANDB_SWEEP_ID", "WANDB_RUN_ID", "WANDB_SWEEP_PARAM_PATH", "WANDB_DIR", "INFMASK_ROOT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    return tmp_path


def test_default_command_reaches_the_trial(sweep_dir):
    """W&B's default command, `${env} ${interpreter} ${program} ${args}` with program pipeline/__main__.py, runs
    infmask's trial: a value the trial's own config check refuses comes back as its one-line exit 2."""
    spec = load_sweep(write(sweep_dir / "no_command.yaml"))
    params = {"benchmark": "trifeatures", "method": "infmasking", "preset": "smoke", "seed": 42,
              "model.mask_ratio": 2.0}
    argv, env = trial_command(spec, sweep_id="s", run_id="s-0000", params=params, base_env=dict(os.environ),
                              wandb_dir=str(sweep_dir))
    assert argv[2].endswith("pipeline/__main__.py") and argv[3] == "--benchmark=trifeatures"
    out = subprocess.run(argv, cwd=spec.cwd, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == ["infmask trial: error: model.mask_ratio: must be in [0, 1), got 2.0"]


def test_default_command_passes_the_check(sweep_dir):
    from infmask.sweeping.command_check import check_command

    check_command(load_sweep(write(sweep_dir / "no_command.yaml")))
    check_command(load_sweep(write(sweep_dir / "args_no_hyphens.yaml", command=[
        "${env}", "${interpreter}", "-m", "infmask", "trial", "${args_no_hyphens}"])))


@pytest.mark.parametrize("command, why", [
    (["${env}", "${interpreter}", "-m", "infmask", "pretrain", "${args}"], "runs `infmask pretrain`, not a trial"),
    (["${env}", "${interpreter}", "-m", "infmask", "trial"], "passes no parameters"),
    (["${env}", "/nonexistent/python3", "-m", "infmask", "trial", "${args}"], "fails before training"),
])
def test_sweep_refuses_a_command_that_cannot_run_a_trial(sweep_dir, command, why, capsys):
    root = sweep_dir / "ws"
    path = write(sweep_dir / "bad.yaml", command=command)
    assert main(["sweep", str(path), "--root", str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and why in err and "command: [${env}, ${interpreter}, -m, infmask, trial" in err
    store = root / "results.sqlite"
    assert not store.exists() or not ResultsStore(store).query("SELECT * FROM sweep_trials")   # no trial started


def test_another_program_is_not_run_by_the_check(sweep_dir):
    from infmask.sweeping.command_check import check_command

    marker = sweep_dir / "ran"
    (sweep_dir / "toy.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    check_command(load_sweep(write(sweep_dir / "toy.yaml", program="toy.py")))
    assert not marker.exists()
    with pytest.raises(Exception, match="program 'missing.py' not found"):
        check_command(load_sweep(write(sweep_dir / "missing.yaml", program="missing.py")))


@pytest.mark.slow
def test_sweep_file_without_command_runs_its_trials(sweep_dir, capsys):
    """The whole path: `infmask sweep` on a file without `command:` trains and probes its trials."""
    root = sweep_dir / "ws"
    path = write(sweep_dir / "no_command.yaml")
    assert main(["sweep", str(path), "--root", str(root), "--count", "1"]) == 0
    rows = ResultsStore(root / "results.sqlite").query("SELECT status, metric_value FROM sweep_trials")
    assert [r["status"] for r in rows] == ["finished"] and rows[0]["metric_value"] is not None
