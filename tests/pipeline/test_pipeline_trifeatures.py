"""The main job end to end on tiny data: the real configs (smoke preset), CPU, a temporary workspace.

One module-scoped workspace is built by the real stages (download, preprocess, run with 2 methods x 1 seed x
both data variants, a 2-config sweep) and then inspected: the store, the table, offline W&B runs of every stage,
idempotent reruns, the probe protocol, bad checkpoints and the notebooks.
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from infmask.cli import main
from infmask.store import ResultsStore

METHODS = ("infmasking", "comm")
SEEDS = (42,)   # mean ± std over seeds is the report tests' business (tests/pipeline/test_report_*)


@pytest.fixture(scope="module")
def smoke_ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke") / "ws"
    mp = pytest.MonkeyPatch()
    mp.setenv("INFMASK_ROOT", str(root))
    mp.setenv("WANDB_MODE", "offline")
    try:
        assert main(["download", "trifeatures", "--root", str(root)]) == 0
        assert main(["preprocess", "trifeatures", "--preset", "smoke", "--root", str(root)]) == 0
        rc = main(["run", "trifeatures", "--preset", "smoke", "--methods", ",".join(METHODS),
                   "--seeds", ",".join(map(str, SEEDS)), "--root", str(root)])
        assert rc == 0
        sweep = root.parent / "sweep.yaml"
        sweep.write_text(yaml.safe_dump({
            "program": "pipeline/__main__.py", "name": "smoke-grid", "method": "grid",
            "metric": {"name": "probe/val/acc1", "goal": "maximize"},
            "parameters": {"benchmark": {"value": "trifeatures"}, "method": {"value": "infmasking"},
                           "preset": {"value": "smoke"}, "seed": {"value": 42},
                           "model.mask_ratio": {"values": [0.5, 0.7]}, "model.temperature": {"values": [0.1]}},
            "command": ["${env}", "${interpreter}", "-m", "infmask", "trial", "${args}"]}, sort_keys=False))
        assert main(["sweep", str(sweep), "--root", str(root)]) == 0
        yield root
    finally:
        mp.undo()


def test_store_has_every_run_probed(smoke_ws):
    store = ResultsStore(smoke_ws / "results.sqlite")
    runs = store.runs_frame()
    table_runs = runs[runs.sweep_id.isna()]
    assert len(table_runs) == len(METHODS) * len(SEEDS) * 2
    assert set(table_runs.status) == {"finished"}
    df = store.results_frame("trifeatures")
    test = df[(df.split == "test") & (df.metric == "acc1")]
    assert set(test.task) == {"share", "unique1", "unique2", "synergy", "all"}
    assert test.groupby("run_id").size().min() == 5 and test.value.between(0, 1).all()
    import torch

    for run_dir in table_runs.run_dir:
        ck = Path(run_dir) / "checkpoints"
        # a finished run keeps one weights-only checkpoint, the one its probe reads; the resume state is gone
        assert sorted(p.name for p in ck.iterdir()) == ["best.ckpt"]
        kept = torch.load(ck / "best.ckpt", map_location="cpu", weights_only=True)
        assert "state_dict" in kept and "infmask_config" in kept and "optimizer_states" not in kept
        cfg = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())
        assert cfg["preset"] == "smoke"
        epochs = [json.loads(line)["epoch"] for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
        assert epochs == sorted(set(epochs)) == list(range(cfg["trainer"]["max_epochs"]))


def test_table_printed_and_written(smoke_ws, capsys):
    assert main(["report", "--table", "trifeatures", "--root", str(smoke_ws), "--no-wandb"]) == 0
    out = capsys.readouterr().out
    for name in ("InfMasking", "CoMM", "Cross", "Cross+Self", "Synergy", "Redundancy", "Uniqueness"):
        assert name in out
    ours = [line for line in out.splitlines() if line.startswith("| InfMasking | smoke") or
            line.startswith("| CoMM | smoke")]
    assert len(ours) == 2 and all("| 1 |" in line for line in ours)  # one seed in every cell
    rep = smoke_ws / "reports"
    assert {"table_trifeatures.md", "table_trifeatures.csv", "table_trifeatures.tex"} <= {p.name for p in rep.iterdir()}


def test_rerun_does_nothing_and_says_so(smoke_ws, capsys):
    rc = main(["run", "trifeatures", "--preset", "smoke", "--methods", "comm", "--seeds", "42",
               "--root", str(smoke_ws)])
    out = capsys.readouterr().out
    assert rc == 0 and "already pretrained" in out and "already probed" in out
    assert main(["download", "trifeatures", "--root", str(smoke_ws)]) == 0
    assert "nothing to do" in capsys.readouterr().out


def _inspect(run_dir: Path) -> dict:
    wandb_bin = Path(sys.executable).with_name("wandb")
    out = subprocess.run([str(wandb_bin), "leet", "inspect", "--summary", "--json", str(run_dir)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_offline_wandb_run_of_every_stage(smoke_ws):
    if not Path(sys.executable).with_name("wandb").exists():
        pytest.skip("wandb CLI not installed")
    runs = sorted((smoke_ws / "wandb").glob("offline-run-*"))
    by_stage: dict[str, dict] = {}
    for d in runs:
        info = _inspect(d)
        stage = (info.get("config") or {}).get("_job_type") or next(
            (s for s in ("download", "preprocess", "pretrain", "probe", "report")
             if s in (info.get("tags") or []) or str(info.get("name", "")).endswith(s)
             or str(info.get("name", "")).startswith(s)), None)
        if stage:
            by_stage.setdefault(stage, info)
    assert {"download", "preprocess", "pretrain", "probe"} <= set(by_stage), sorted(by_stage)
    assert "data/seconds" in by_stage["download"]["summary"]
    assert {"train/loss", "val/loss", "probe/val/acc1"} <= set(by_stage["pretrain"]["summary"])
    assert any(k.startswith("perf/") for k in by_stage["pretrain"]["summary"])
    probe_keys = set(by_stage["probe"]["summary"])
    assert {"probe/test/synergy/acc1", "probe/test/share/acc1", "probe/val/acc1"} <= probe_keys
    assert "WANDB_API_KEY" not in json.dumps(by_stage)


def test_probe_selection_never_reads_test_labels(smoke_ws, monkeypatch):
    """Scramble the test labels the probe stage sees: the chosen regularisation and the validation scores must
    not move (selection never touched them), while the test scores do."""
    from infmask import probing
    from infmask.stages.probe import probe

    store = ResultsStore(smoke_ws / "results.sqlite")
    run = store.runs_frame().query("method == 'infmasking' and seed == 42 and sweep_id.isna()").iloc[0]
    ckpt = Path(run.run_dir) / "checkpoints" / "best.ckpt"
    before = store.results_frame("trifeatures").query("run_id == @run.run_id")
    real = probing.extract_features

    def scrambled(model, dm, split, device, max_samples=None):
        X, Y = real(model, dm, split, device, max_samples)
        if split == "test":
            rng = np.random.default_rng(0)
            Y = {t: rng.permutation(y) for t, y in Y.items()}
        return X, Y

    monkeypatch.setattr(probing, "extract_features", scrambled)
    probe(ckpt, __import__("infmask.workspace", fromlist=["Workspace"]).Workspace.open(smoke_ws), force=True)
    after = store.results_frame("trifeatures").query("run_id == @run.run_id")
    key = ["split", "task", "metric"]
    b, a = before.set_index(key).value, after.set_index(key).value
    assert np.allclose(b.loc["val"], a.loc["val"].reindex(b.loc["val"].index))  # C and val scores unchanged
    assert not np.allclose(b.loc["test"], a.loc["test"].reindex(b.loc["test"].index))


def test_probe_bad_checkpoints_exit_2(smoke_ws, tmp_path, capsys):
    assert main(["probe", str(tmp_path / "missing.ckpt"), "--root", str(smoke_ws)]) == 2
    assert "not found" in capsys.readouterr().err
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all" * 100)
    assert main(["probe", str(garbage), "--root", str(smoke_ws)]) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err
    store = ResultsStore(smoke_ws / "results.sqlite")
    run_dir = Path(store.runs_frame().run_dir.dropna().iloc[0])
    truncated = tmp_path / "truncated.ckpt"
    data = (run_dir / "checkpoints" / "best.ckpt").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    assert main(["probe", str(truncated), "--root", str(smoke_ws)]) == 2
    err = capsys.readouterr().err
    assert "cannot read checkpoint" in err and len(err.strip().splitlines()) == 1
    assert main(["probe", "no-such-run", "--root", str(smoke_ws)]) == 2


def test_notebooks_on_the_real_workspace(smoke_ws, tmp_path):
    from infmask.stages.notebooks import execute_notebooks

    out = execute_notebooks(smoke_ws, tmp_path / "nb", timeout=120)
    assert len(out) >= 3
    figures = list((smoke_ws / "reports" / "figures").glob("*.png"))
    assert figures, "the notebooks saved no figures"
    import matplotlib.image as mpimg

    for png in figures:
        assert png.stat().st_size > 5000
        assert np.asarray(mpimg.imread(png)).std() > 0.01


def test_sweep_recorded_with_best_config(smoke_ws, capsys):
    store = ResultsStore(smoke_ws / "results.sqlite")
    sweeps = store.query("SELECT sweep_id FROM sweeps")
    assert len(sweeps) == 1
    trials = store.trials(sweeps[0][0])
    assert len(trials) == 2 and {t["status"] for t in trials} == {"finished"}  # the 2x1 grid, each trial once
    params = {(json.loads(t["params_json"])["model.mask_ratio"], json.loads(t["params_json"])["model.temperature"])
              for t in trials}
    assert params == {(0.5, 0.1), (0.7, 0.1)}
    assert main(["report", "--sweep", sweeps[0][0], "--root", str(smoke_ws), "--no-wandb"]) == 0
    assert list((smoke_ws / "reports").glob("*heatmap*.png"))
    out = capsys.readouterr().out
    assert "best" in out.lower() and "mask_ratio" in out
