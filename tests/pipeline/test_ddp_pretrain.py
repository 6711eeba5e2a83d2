"""DDP: one smoke run on 2 CPU processes (Lightning `ddp`, gloo). `infmask trial` pretrains
with DDP and probes on rank 0: it completes, the results store holds one run with one set of probe metrics, one
offline W&B run exists, and the data was sharded by Lightning's DistributedSampler."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from infmask.store import ResultsStore
from helpers.ddp_support import REPO, cli_env, smoke_workspace

DDP = ["trainer.devices=2", "trainer.strategy=ddp", "trainer.accelerator=cpu"]


def test_ddp_two_cpu_processes_one_run_one_probe_one_wandb_run(tmp_path, tmp_path_factory):
    ws = smoke_workspace(tmp_path_factory, tmp_path / "ws")
    cmd = [sys.executable, "-m", "infmask", "trial", "--benchmark=trifeatures", "--method=infmasking",
           "--preset=smoke", "--seed=42", "--trainer.max_epochs=1", *(f"--{o}" for o in DDP)]
    run = subprocess.run(cmd, cwd=REPO, env=cli_env(ws), capture_output=True, text=True, timeout=400)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-6000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in log, log[-3000:]   # the second rank really ran

    store = ResultsStore(ws / "results.sqlite")
    runs = store.query("SELECT run_id, status, wandb_run_id, run_dir FROM runs")
    assert len(runs) == 1 and runs[0]["status"] == "finished", [dict(r) for r in runs]
    run_id, run_dir = runs[0]["run_id"], Path(runs[0]["run_dir"])
    # one set of final probe metrics: each (split, task, metric) once, at step -1
    probe = store.query("SELECT split, task, metric, step FROM metrics WHERE stage='probe'")
    keys = [(r["split"], r["task"], r["metric"]) for r in probe]
    assert keys and len(keys) == len(set(keys)) and {r["step"] for r in probe} == {-1}
    assert {"val", "test"} <= {k[0] for k in keys} and ("test", "synergy", "acc1") in keys
    # the per-epoch validation probe ran once (rank 0) and reached the store once
    val_probe = store.query("SELECT task, metric, step FROM metrics WHERE stage='pretrain' AND task='share'")
    assert val_probe and {r["step"] for r in val_probe} == {0}
    lines = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [ln["epoch"] for ln in lines] == [0]

    # one W&B run (the trial's), written by rank 0 only
    wandb_runs = sorted((ws / "wandb").glob("offline-run-*"))
    assert len(wandb_runs) == 1, wandb_runs
    assert wandb_runs[0].name.endswith(runs[0]["wandb_run_id"])
    inspect = subprocess.run([str(Path(sys.executable).with_name("wandb")), "leet", "inspect", "--summary", "--json",
                              str(wandb_runs[0])], capture_output=True, text=True, timeout=120)
    assert inspect.returncode == 0, inspect.stderr
    summary = json.loads(inspect.stdout)["summary"]   # training curves and the final probe, in the one run
    assert {"train/loss", "probe/val/acc1", "probe/test/synergy/acc1"} <= set(summary), sorted(summary)

    # sharding: each rank saw about half of the training set, so the step count is that of the half
    from infmask.stages.data_stages import datamodule_for
    from infmask.stages.probe import load_checkpoint
    from infmask.workspace import Workspace

    assert not (run_dir / "checkpoints" / "last.ckpt").exists()   # finished: the resume state is gone
    ckpt, cfg = load_checkpoint(run_dir / "checkpoints" / "best.ckpt")
    assert cfg.run_id == run_id and cfg.trainer.devices == 2
    dm = datamodule_for(cfg, Workspace.open(ws))
    dm.setup("fit")
    n, bs = len(dm.ssl_dataset("train")), cfg.data.batch_size
    per_rank = math.ceil(n / 2)
    assert ckpt["global_step"] in (per_rank // bs, math.ceil(per_rank / bs)), (ckpt["global_step"], n, bs)
    assert ckpt["global_step"] < math.ceil(n / bs)   # fewer steps than one process over the whole set


def test_a_second_script_launched_ddp_fit_in_one_process_is_refused(tmp_path, monkeypatch):
    """Lightning's `ddp` launcher starts the other ranks by re-running the command once; a second DDP fit in the
    same process (e.g. the second run of `infmask run`) would wait for ranks that never come: a clear exit 2."""
    from infmask.config import build_config
    from infmask.errors import UsageError
    from infmask.stages import pretrain as stage
    from infmask.workspace import Workspace

    monkeypatch.setattr(stage, "_LAUNCHED_RANKS", True)
    cfg = build_config("trifeatures", "infmasking", "smoke", seed=42, overrides=DDP)
    ws = Workspace.open(tmp_path / "ws")
    with pytest.raises(UsageError, match="ddp_spawn"):
        stage.pretrain(cfg, ws)
    assert not (ws.runs).exists()   # refused before anything was written
