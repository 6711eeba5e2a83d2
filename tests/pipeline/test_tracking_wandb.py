"""W&B bookkeeping read back with wandb's own reader: a sweep trial is one run named after its trial id, typed as
what it did (pretrain+probe), with the config shape a W&B agent's run has (nested sections plus the flat sweep
keys), summaries declared only for keys it logs; a refused download leaves no run to sync."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers.wandb_runs import config, declared_summaries, logged_keys, metric_records, records, run_record
from infmask.cli import main
from infmask.store import ResultsStore

pytestmark = pytest.mark.skipif(not Path(sys.executable).with_name("wandb").exists(), reason="wandb CLI missing")


@pytest.fixture(scope="module")
def trial_ws(tmp_path_factory):
    """One real smoke trial through `infmask sweep` (the embedded runner), W&B offline."""
    root = tmp_path_factory.mktemp("wb") / "ws"
    sweep = root.parent / "one.yaml"
    sweep.write_text(yaml.safe_dump({
        "program": "pipeline/__main__.py", "name": "one", "method": "grid",
        "metric": {"name": "probe/val/acc1", "goal": "maximize"},
        "parameters": {"benchmark": {"value": "trifeatures"}, "method": {"value": "infmasking"},
                       "preset": {"value": "smoke"}, "seed": {"value": 42}, "model.mask_ratio": {"values": [0.5]}},
        "command": ["${env}", "${interpreter}", "-m", "infmask", "trial", "${args}"]}, sort_keys=False))
    mp = pytest.MonkeyPatch()
    for key in ("WANDB_SWEEP_ID", "WANDB_RUN_ID", "WANDB_SWEEP_PARAM_PATH", "WANDB_DIR"):
        mp.delenv(key, raising=False)
    mp.setenv("WANDB_MODE", "offline")
    try:
        assert main(["sweep", str(sweep), "--root", str(root)]) == 0
        trial = ResultsStore(root / "results.sqlite").query("SELECT * FROM sweep_trials")[0]
        runs = sorted((root / "wandb").glob("offline-run-*"))
        yield {"root": root, "trial": dict(trial), "runs": runs, "records": records(runs[0]) if runs else []}
    finally:
        mp.undo()


def test_one_run_per_trial_named_after_the_trial(trial_ws):
    trial = trial_ws["trial"]
    assert trial["status"] == "finished"
    assert [p.name.endswith(f"-{trial['trial_id']}") for p in trial_ws["runs"]] == [True]
    run = run_record(trial_ws["records"])
    assert run["run_id"] == trial["trial_id"]
    assert run["job_type"] == "pretrain+probe"                   # a trial pretrains and probes
    stored = ResultsStore(trial_ws["root"] / "results.sqlite").get_run(trial["run_id"])
    assert stored["wandb_run_id"] == trial["trial_id"]


def test_config_has_the_agent_shape(trial_ws, tmp_path, monkeypatch):
    """Nested sections (our resolved config) and the flat sweep keys (the agent's parameters), as in a run that
    `wandb agent` started; the same keys whichever path started the run."""
    cfg = config(trial_ws["records"])
    params = json.loads(trial_ws["trial"]["params_json"])
    assert cfg["model"]["mask_ratio"] == 0.5 and cfg["model.mask_ratio"] == 0.5
    assert set(params) <= set(cfg) and {"data", "model", "optim", "trainer", "probe"} <= set(cfg)

    # a run started as a W&B agent starts it: a fresh process with the sweep id, run id and parameter file in its
    # environment (wandb reads them once per process)
    from infmask.sweeping import write_param_file

    param_file = tmp_path / "config-agentrun.yaml"
    write_param_file(str(param_file), params)
    env = dict(os.environ, WANDB_SWEEP_ID="abc123", WANDB_RUN_ID="agentrun", WANDB_SWEEP_PARAM_PATH=str(param_file),
               WANDB_MODE="offline")
    code = ("from infmask.config import build_config; from infmask.tracking import start_run; "
            "from infmask.workspace import Workspace; "
            f"cfg = build_config('trifeatures', 'infmasking', 'smoke', overrides={{'model.mask_ratio': 0.5}}); "
            f"start_run(cfg, Workspace.open({str(tmp_path / 'agent')!r}), 'trial').finish()")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    agent = config(records(next((tmp_path / "agent" / "wandb").glob("offline-run-*-agentrun"))))
    assert set(agent) - {"_wandb"} == set(cfg) - {"_wandb"}


def test_summaries_only_for_logged_keys(trial_ws):
    recs = trial_ws["records"]
    declared = declared_summaries(recs)
    logged = logged_keys(recs)
    assert declared and set(declared) <= logged, sorted(set(declared) - logged)
    assert declared["probe/val/acc1"] == {"max": True} and declared["train/loss"] == {"min": True}
    assert len(metric_records(recs)) <= len(logged) + 2          # + Lightning's step-metric declarations


def test_refused_download_leaves_no_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    root = tmp_path / "ws"
    assert main(["download", "mimic", "--root", str(root)]) == 2   # credentialed: explains the route, exit 2
    assert "im.pk" in capsys.readouterr().err
    assert not list(root.glob("wandb/offline-run-*"))

