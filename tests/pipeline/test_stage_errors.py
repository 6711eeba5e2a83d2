"""Damaged stores and checkpoints, checkpoints from elsewhere, a root that is a file: one-line exit-2 errors that
name the file and what to do, with nothing half-written (pipeline stages)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from infmask.cli import main
from infmask.config import build_config
from infmask.store import ResultsStore
from infmask.workspace import Workspace
from helpers.ddp_support import smoke_workspace

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def ws(tmp_path, tmp_path_factory, monkeypatch):
    root = smoke_workspace(tmp_path_factory, tmp_path / "ws")
    monkeypatch.setenv("INFMASK_ROOT", str(root))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    return root


def one_line(capsys, *words: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, err
    return err


def _sweep_file(path: Path) -> Path:
    path.write_text(yaml.safe_dump({
        "name": "tiny", "method": "grid", "metric": {"name": "probe/val/acc1", "goal": "maximize"},
        "parameters": {"benchmark": {"value": "trifeatures"}, "preset": {"value": "smoke"},
                       "model.mask_ratio": {"values": [0.5]}},
        "command": ["${env}", "${interpreter}", "-m", "infmask", "trial", "${args}"]}))
    return path


def test_damaged_store_is_a_one_line_error_in_every_stage(ws, tmp_path, capsys):
    db = ws / "results.sqlite"
    garbage = b"SQLite format 3\x00" + bytes(range(256)) * 40  # the header, then nonsense
    db.write_bytes(garbage)
    stages = [["pretrain", "trifeatures", "--preset", "smoke"], ["probe", "trifeatures-infmasking-x-s42"],
              ["report", "--table", "trifeatures", "--no-wandb"],
              ["run", "trifeatures", "--preset", "smoke", "--methods", "infmasking", "--seeds", "42"],
              ["trial", "--benchmark=trifeatures", "--preset=smoke"], ["sweep", str(_sweep_file(tmp_path / "s.yaml"))],
              ["notebooks"]]
    for args in stages:
        assert main(args) == 2, args
        one_line(capsys, str(db), "move it aside")
        assert db.read_bytes() == garbage
    assert not (ws / "runs").exists()


def test_damaged_last_checkpoint_is_a_one_line_error_and_the_run_is_marked_failed(ws, capsys):
    cfg = build_config("trifeatures", "infmasking", "smoke")
    run_dir = Workspace(ws).run_dir(cfg)
    last = run_dir / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"PK\x03\x04" + b"\x00" * 300)  # a checkpoint cut short by a full disk
    store = ResultsStore(ws / "results.sqlite")
    store.upsert_run(cfg, status="running", run_dir=str(run_dir))  # as a killed run leaves it
    assert main(["pretrain", "trifeatures", "--preset", "smoke"]) == 2
    one_line(capsys, str(last), "is damaged", "Move it aside")
    row = store.get_run(cfg.run_id)
    assert row["status"] == "failed" and "damaged checkpoint" in row["message"]
    assert not (run_dir / "metrics.jsonl").exists()


@pytest.mark.parametrize("name", ["empty.ckpt", "empty"])
def test_probe_of_an_empty_file_is_a_one_line_error(ws, tmp_path, capsys, name):
    (tmp_path / name).write_bytes(b"")
    assert main(["probe", str(tmp_path / name)]) == 2
    one_line(capsys, "cannot read checkpoint", name)


def _checkpoint(path: Path, cfg, weights_cfg=None) -> Path:
    import torch

    from infmask.models.methods import build_method

    model = build_method((weights_cfg or cfg).to_dict())
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"infmask_config": cfg.to_dict(), "state_dict": model.state_dict()}, path)
    return path


def test_probe_of_weights_that_do_not_fit_their_config_records_nothing(ws, tmp_path, capsys):
    cfg = build_config("trifeatures", "infmasking", "smoke")
    other = build_config("trifeatures", "infmasking", "smoke", overrides=["model.embed_dim=64"])
    ckpt = _checkpoint(tmp_path / "edited.ckpt", cfg, weights_cfg=other)
    assert main(["probe", str(ckpt)]) == 2
    one_line(capsys, "do not fit the config", "edited.ckpt")
    assert not (ws / "results.sqlite").exists() or ResultsStore(ws / "results.sqlite").get_run(cfg.run_id) is None


def test_probe_of_a_checkpoint_outside_the_workspace_writes_into_the_workspace(ws, tmp_path, capsys):
    cfg = build_config("trifeatures", "infmasking", "smoke", seed=7)
    elsewhere = tmp_path / "elsewhere"
    ckpt = _checkpoint(elsewhere / "checkpoints" / "model.ckpt", cfg)
    assert main(["probe", str(ckpt)]) == 0, capsys.readouterr().err
    assert sorted(str(p.relative_to(elsewhere)) for p in elsewhere.rglob("*")) == ["checkpoints",
                                                                                   "checkpoints/model.ckpt"]
    run_dir = Workspace(ws).run_dir(cfg)
    assert (run_dir / "probe.json").is_file()
    assert ResultsStore(ws / "results.sqlite").get_run(cfg.run_id)["run_dir"] == str(run_dir)


def test_root_that_is_a_file_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    root = tmp_path / "not-a-folder"
    root.write_text("x")
    for args in (["download", "trifeatures"], ["pretrain", "trifeatures", "--preset", "smoke"], ["report"]):
        assert main([*args, "--root", str(root)]) == 2, args
        one_line(capsys, str(root), "is a file")
    assert root.read_text() == "x"
