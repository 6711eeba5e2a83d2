"""Sweeps: a real 2x2 grid of `infmask trial` at the smoke preset on Trifeatures, end to end with the
embedded runner: 4 trials recorded with their validation metric, 4 runs in the store tagged with the sweep, one
offline W&B run per trial under the agent's run id, and the sweep report (best config, heat map)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from infmask.store import ResultsStore
from infmask.sweeping import load_sweep

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_real_2x2_smoke_grid_end_to_end(tmp_path):
    config = yaml.safe_load((REPO / "sweeps" / "trifeatures.yaml").read_text())
    config["parameters"].update({"preset": {"value": "smoke"}, "seed": {"value": 42},
                                 "model.mask_ratio": {"values": [0.5, 0.7]},
                                 "model.temperature": {"values": [0.1, 0.2]}})
    sweep_file = tmp_path / "trifeatures_smoke.yaml"
    sweep_file.write_text(yaml.safe_dump(config, sort_keys=False))
    ws = tmp_path / "ws"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("WANDB_SWEEP", "WANDB_RUN", "INFMASK_", "WANDB_DIR"))}
    env["WANDB_MODE"] = "offline"

    run = subprocess.run([sys.executable, "-m", "infmask", "sweep", str(sweep_file), "--root", str(ws)], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=3000)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]

    sweep_id = load_sweep(sweep_file).default_sweep_id()
    store = ResultsStore(ws / "results.sqlite")
    trials = store.trials(sweep_id)
    assert [t["status"] for t in trials] == ["finished"] * 4
    assert all(t["metric_value"] is not None and 0.0 <= t["metric_value"] <= 1.0 for t in trials)
    runs = store.query("SELECT run_id, status, sweep_id FROM runs WHERE sweep_id=?", (sweep_id,))
    assert sorted(r["run_id"] for r in runs) == sorted(t["run_id"] for t in trials)
    assert {r["status"] for r in runs} == {"finished"}
    for t in trials:   # one offline W&B run per trial, under the run id an agent would have given it
        assert list((ws / "wandb").glob(f"offline-run-*-{t['trial_id']}")), t["trial_id"]
    assert "best probe/val/acc1=" in run.stdout

    report = subprocess.run([sys.executable, "-m", "infmask", "report", "--sweep", sweep_id, "--no-wandb",
                             "--root", str(ws)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert report.returncode == 0, report.stdout[-2000:] + report.stderr[-2000:]
    assert list((ws / "reports").rglob("*.png")), "no heat map written"
