"""`infmask --version`, `infmask config` / `--print-config` (the resolved config with each key's source) and
`--root` on every stage that touches a workspace, `trial` included."""
import re

import pytest
import yaml

from infmask.cli import main
from infmask.config import Config, build_config


def _source(out: str, section: str, key: str) -> str:
    """The trailing `# source` comment of `key` inside `section` of the printed YAML."""
    block = out.split(f"\n{section}:\n", 1)[1]
    line = next(ln for ln in block.splitlines() if ln.startswith(f"  {key}: "))
    return line.rsplit("  # ", 1)[1]


def test_version(capsys):
    assert main(["--version"]) == 0
    assert re.match(r"infmask \d+\.\d+\.\d+", capsys.readouterr().out)


def test_config_prints_the_resolved_yaml_with_sources(capsys):
    argv = ["config", "trifeatures", "--method", "comm", "--preset", "smoke", "--seed", "43",
            "model.temperature=0.2", "--optim.lr=1e-3"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    cfg = build_config("trifeatures", "comm", "smoke", seed=43, overrides=["model.temperature=0.2", "optim.lr=1e-3"])
    assert Config.from_dict(yaml.safe_load(out)) == cfg           # valid YAML, the very config a run would train
    assert cfg.run_id in out and cfg.config_hash() in out
    assert _source(out, "model", "temperature") == "command line"
    assert _source(out, "optim", "lr") == "command line"
    assert _source(out, "data", "image_size") == "preset smoke"
    assert _source(out, "model", "n_layers") == "base"
    assert _source(out, "data", "num_workers") == "default"
    assert re.search(r"^seed: 43  # --seed$", out, re.M)


def test_config_bad_key_is_one_line_exit_2(capsys):
    assert main(["config", "trifeatures", "--preset", "smoke", "model.nope=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'model.nope'" in err and "mask_ratio" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("stage", ["pretrain", "run", "trial"])
def test_print_config_on_training_stages_trains_nothing(stage, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("INFMASK_ROOT", str(tmp_path / "ws"))
    argv = {"pretrain": ["pretrain", "trifeatures", "--preset", "smoke", "model.mask_ratio=0.5", "--print-config"],
            "run": ["run", "trifeatures", "--preset", "smoke", "--methods", "infmasking", "--print-config",
                    "model.mask_ratio=0.5"],
            # an agent's argv (${args_no_hyphens} first), with the option after it
            "trial": ["trial", "benchmark=trifeatures", "preset=smoke", "model.mask_ratio=0.5", "--print-config"]}
    assert main(argv[stage]) == 0
    docs = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    assert docs and all(d["model"]["mask_ratio"] == 0.5 and d["preset"] == "smoke" for d in docs)
    if stage == "run":   # one document per data variant of trifeatures
        assert sorted(d["data"]["biased"] for d in docs) == [False, True]
    assert not (tmp_path / "ws").exists() and not (tmp_path / "workspace").exists()


@pytest.mark.parametrize("form", [["--root", "{r}"], ["--root={r}"]])
def test_trial_takes_root(form, tmp_path, monkeypatch, capsys):
    """The same workspace option as every other stage, wherever it sits in an agent's argv. MIMIC's data is
    credentialed, so the trial stops at the data step with a message naming the file's place in that root."""
    monkeypatch.setenv("INFMASK_ROOT", str(tmp_path / "elsewhere"))
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "chosen"
    argv = ["trial", "--benchmark=mimic", "--preset=smoke"] + [a.format(r=root) for a in form] + ["--seed=1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert str(root / "raw" / "mimic") in err
    assert not (tmp_path / "elsewhere").exists() and not (tmp_path / "workspace").exists()
