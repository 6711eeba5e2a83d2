"""The CLI surface: help for every stage, one-line errors with exit code 2, the dataset map."""
import os
import subprocess
import sys

import pytest

from infmask.cli import STAGES, main


def test_help_lists_every_stage(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for stage in STAGES:
        assert stage in out


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_has_help(stage, capsys):
    assert main([stage, "--help"]) == 0
    assert "usage: infmask " + stage in capsys.readouterr().out


def test_help_names_the_registered_methods_without_torch():
    code = ("import sys; from infmask.cli import main; rc = main(['pretrain', '--help']); "
            "assert 'torch' not in sys.modules, 'torch imported'; import infmask.config; "
            "assert 'torch' not in sys.modules, 'torch imported by the config'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    from infmask.models.method_registry import METHOD_NAMES

    assert " | ".join(METHOD_NAMES) in " ".join(out.stdout.split())


def test_python_m_pipeline_is_infmask():
    out = subprocess.run([sys.executable, "-m", "pipeline", "download", "--list"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0
    for kind in ("generated", "public", "credentialed"):
        assert kind in out.stdout
    for name in ("trifeatures", "mosi", "humor", "sarcasm", "mimic", "visionandtouch", "mmimdb"):
        assert name in out.stdout


def test_unknown_dataset_exits_2_listing_choices(capsys, root):
    assert main(["download", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert "unknown dataset 'nosuch'" in err and "trifeatures" in err and "mimic" in err
    assert len(err.strip().splitlines()) == 1


def test_unknown_stage_and_stray_arguments_exit_2(capsys):
    assert main(["nosuch"]) == 2
    assert main(["probe", "x", "model.mask_ratio=0.5"]) == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_damaged_processed_data_is_rebuilt_never_used(root, capsys):
    from infmask.config import build_config
    from infmask.data import manifest, trifeatures_stages
    from infmask.data.registry import DATASETS
    from infmask.stages.data_stages import paths_for, settings_for
    from infmask.workspace import Workspace

    assert main(["download", "trifeatures", "--root", str(root)]) == 0
    assert main(["preprocess", "trifeatures", "--preset", "smoke", "--root", str(root)]) == 0
    entry = DATASETS["trifeatures"]
    out = trifeatures_stages.processed_dir(paths_for(Workspace.open(root), entry),
                                           settings_for(build_config("trifeatures", preset="smoke"), entry))
    victim = sorted(out.glob("images_*.npy"))[0]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])  # truncated
    manifest.forget_verified()
    capsys.readouterr()
    assert main(["preprocess", "trifeatures", "--preset", "smoke", "--root", str(root)]) == 0
    captured = capsys.readouterr()
    assert "preprocessed trifeatures into" in captured.out  # rebuilt, not "nothing to do"
    assert victim.read_bytes() == data


def test_run_with_a_variant_key_overridden_trains_that_variant_once(capsys, root):
    """`data.biased=False` on `infmask run trifeatures` (as `make demo` passes it) makes both data variants the same
    run: it is trained and probed once, and the summary line counts one run."""
    from infmask.store import ResultsStore

    rc = main(["run", "trifeatures", "--preset", "smoke", "--methods", "cross", "--seeds", "42", "data.biased=False",
               "--root", str(root), "trainer.max_epochs=1"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "1 run (1 method × 1 seed)" in out and "[2/" not in out
    runs = ResultsStore(root / "results.sqlite").query("SELECT run_id, status FROM runs")
    assert [r["status"] for r in runs] == ["finished"]


def test_threads_option_sets_torch_and_the_environment_for_child_processes(tmp_path, monkeypatch, capsys):
    import torch

    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.setenv(key, "1")
    before = torch.get_num_threads()
    try:
        assert main(["pretrain", "trifeatures", "--preset", "smoke", "--threads", "2", "--print-config",
                     "--root", str(tmp_path / "ws")]) == 0
        assert torch.get_num_threads() == 2
        assert os.environ["OMP_NUM_THREADS"] == os.environ["MKL_NUM_THREADS"] == "2"
    finally:
        torch.set_num_threads(before)
    capsys.readouterr()
    for stage in (["pretrain", "trifeatures"], ["run", "trifeatures"], ["probe", "nope"], ["bench", "trifeatures"]):
        assert main([*stage, "--threads", "0", "--root", str(tmp_path / "ws")]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "--threads must be >= 1, got 0" in err, err
