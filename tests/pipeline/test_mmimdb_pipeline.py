"""MM-IMDb through the CLI, as a user runs it: download (local HTTP mirror), preprocess, pretrain (smoke preset,
online and cached modes), probe and report, on a tiny archive with the real layout and tiny random CLIP towers.
Also: without a weights directory, `infmask pretrain mmimdb` exits 2 and says what to fetch and where."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")

from helpers.mmimdb_support import HUB_NAME, TEST_IMAGE_SIZE, mirror_tree, serve, single_thread_blas, tiny_clip  # noqa: E402
from helpers.mmimdb_support import make_fixture, write_archive  # noqa: E402

from infmask.data import mmimdb as M  # noqa: E402
from infmask.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    base = tmp_path_factory.mktemp("mmimdb_cli")
    make_fixture(base / "src", n_train=24, n_dev=8, n_test=8)
    archive = write_archive(base / "src", base / "mmimdb.tar.gz")
    tiny_clip(base / "weights")
    with serve(mirror_tree(base / "mirror", archive)) as url:
        yield {"base": base, "url": url, "root": str(base / "ws"), "weights": str(base / "weights")}


def _cli(site, *args):
    with single_thread_blas():
        return main([*args, "--root", site["root"]])


@pytest.fixture(autouse=True)
def no_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")   # tracking has its own tests; keep this one fast


def test_without_weights_pretrain_exits_2_naming_what_to_fetch(site, capsys, monkeypatch):
    from infmask.models import clip_towers as ct

    monkeypatch.delenv(ct.ENV_DIR, raising=False)
    monkeypatch.setenv("HF_HOME", str(site["base"] / "no-hf-cache"))
    assert _cli(site, "download", "mmimdb", "--base-url", site["url"]) == 0
    capsys.readouterr()
    assert _cli(site, "pretrain", "mmimdb", "--preset", "smoke", f"data.image_size={TEST_IMAGE_SIZE}") == 2
    err = capsys.readouterr().err
    assert HUB_NAME in err and "data.weights_dir" in err and ct.ENV_DIR in err
    assert "Traceback" not in err


def test_download_preprocess_pretrain_probe_report_online_and_cached(site, capsys):
    common = ["--preset", "smoke", f"data.weights_dir={site['weights']}", f"data.image_size={TEST_IMAGE_SIZE}",
              "data.batch_size=8", "trainer.max_epochs=1"]
    assert _cli(site, "download", "mmimdb", "--base-url", site["url"]) == 0
    assert _cli(site, "preprocess", "mmimdb", *[c for c in common if c.startswith("data.")]) == 0
    out = capsys.readouterr().out
    assert "train 22, val 8, test 8" in out or "nothing to do" in out or "indexed" in out

    metrics = {}
    for mode in ("False", "True"):
        assert _cli(site, "pretrain", "mmimdb", *common, f"data.feature_cache={mode}") == 0, mode
        line = [ln for ln in capsys.readouterr().out.splitlines() if ": finished (" in ln][-1]
        run_dir = line.split(": finished (")[1].rstrip(")")
        assert _cli(site, "probe", run_dir) == 0
        probe = json.loads((M.Path(run_dir) / "probe.json").read_text())["metrics"]
        for k in ("probe/test/f1_mean", "probe/test/f1_weighted", "probe/test/acc1", "probe/test/acc1_subset",
                  "probe/val/f1_mean"):
            assert 0.0 <= probe[k] <= 1.0, (mode, k)
        metrics[mode] = probe
        cfg = M.Path(run_dir, "config.yaml").read_text()
        assert f"feature_cache: {mode.lower()}" in cfg

    assert _cli(site, "report", "--table", "mmimdb", "--no-wandb") == 0
    table = capsys.readouterr().out
    for col in ("weighted-F1", "macro-F1", "InfMasking (CLIP backbone)", "CoMM (CLIP backbone)", "SimCLR", "SLIP",
                "cached features"):
        assert col in table, col
    assert (M.Path(site["root"]) / "reports" / "table_mmimdb.md").is_file()
