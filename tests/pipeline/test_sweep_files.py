"""sweeps/*.yaml: valid W&B sweep configs (W&B's own schema), one grid per benchmark around the paper's best values,
the trial command W&B agents run, and the benchmark's validation metric; checked against the benchmark configs
that exist."""
from pathlib import Path

import pytest
import yaml

from infmask.config import benchmark_spec, benchmarks
from infmask.sweeping import load_engine, load_sweep

SWEEPS = Path(__file__).resolve().parents[2] / "sweeps"
# the reference: the paper's best (mask ratio, temperature) per benchmark, and the metric each sweep optimises
PAPER_BEST = {"trifeatures": (0.7, 0.1), "mosi": (0.8, 0.1), "humor": (0.5, 0.05), "sarcasm": (0.5, 0.05),
              "mimic": (0.8, 0.2), "visionandtouch": (0.5, 0.1), "visionandtouch_bin": (0.7, 0.1),
              "humor_3mod": (0.5, 0.05), "visionandtouch_bin_3mod": (0.8, 0.1), "mmimdb": (0.8, 0.2)}
METRIC = {b: ("probe/val/acc1", "maximize") for b in PAPER_BEST}
METRIC.update(visionandtouch=("probe/val/mse", "minimize"), mmimdb=("probe/val/f1_mean", "maximize"))
TRIAL_COMMAND = ["${env}", "${interpreter}", "-m", "infmask", "trial", "${args}"]
FILES = sorted(SWEEPS.glob("*.yaml"))


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_one_grid_file_per_benchmark_and_one_bayes_variant():
    assert {p.stem for p in FILES} == set(PAPER_BEST) | {"trifeatures_bayes"}


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_valid_w_and_b_sweep_config(path):
    config = load(path)
    run_cap = config.pop("run_cap", None)   # sweeps 0.2.0's schema lacks run_cap; W&B's server takes it
    assert run_cap is None or (isinstance(run_cap, int) and run_cap > 0)
    assert load_engine().schema_violations_from_proposed_config(config) == []
    assert config["program"] == "pipeline/__main__.py" and config["command"] == TRIAL_COMMAND
    assert "\n  - ${args}\n" in path.read_text()   # a block list: the flow style with ${...} is invalid YAML
    benchmark = config["parameters"]["benchmark"]["value"]
    assert path.stem.startswith(benchmark)
    assert (config["metric"]["name"], config["metric"]["goal"]) == METRIC[benchmark]
    assert config["parameters"]["method"] == {"value": "infmasking"}
    assert config["parameters"]["preset"]["value"] in ("paper", "cpu")
    assert load_engine().next_run(config, []) is not None   # the engine accepts it (grid: categorical values only)


@pytest.mark.parametrize("benchmark", sorted(PAPER_BEST))
def test_grid_around_the_paper_best(benchmark):
    config = load(SWEEPS / f"{benchmark}.yaml")
    assert config["method"] == "grid" and "run_cap" not in config
    p = config["parameters"]
    rho, tau = PAPER_BEST[benchmark]
    masks, temps = p["model.mask_ratio"]["values"], p["model.temperature"]["values"]
    assert rho in masks and tau in temps and len(masks) >= 4 and len(temps) >= 3
    assert min(masks) < rho < max(masks) or rho == max(masks) == 0.9
    assert all(0 < m < 1 for m in masks) and all(t > 0 for t in temps)
    assert p["seed"] == {"values": [42, 43, 44]}


def test_bayes_variant_is_continuous():
    config = load(SWEEPS / "trifeatures_bayes.yaml")
    assert config["method"] == "bayes" and "run_cap" not in config   # the local controller's schema lacks it
    p = config["parameters"]
    assert p["model.mask_ratio"]["distribution"] == "uniform" and 0 < p["model.mask_ratio"]["min"]
    assert p["model.mask_ratio"]["max"] < 1
    assert p["model.temperature"]["distribution"] == "log_uniform_values"


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_w_and_b_local_controller_accepts_the_file(path):
    """`wandb sweep --controller FILE` marks the config local and validates it with wandb's controller before it
    creates the sweep (wandb/cli/cli.py); the same check, called the same way (it needs no server)."""
    from wandb.wandb_controller import _WandbController

    config = load(path)
    config.setdefault("controller", {})["type"] = "local"
    assert _WandbController._validate(None, config) == ""


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_parameters_fit_the_benchmark_config(path):
    """Every parameter is a key the benchmark's config declares (checked by the runner's own loader, which builds
    the config from each value); skipped for benchmarks whose config does not exist yet."""
    benchmark = load(path)["parameters"]["benchmark"]["value"]
    if benchmark not in benchmarks():
        pytest.skip(f"pipeline/configs/{benchmark}.yaml not written yet")
    spec = load_sweep(path)
    assert spec.cwd == SWEEPS.parent   # trials run from the repository root, like an agent started there
    sweep_metric = benchmark_spec(benchmark).get("sweep_metric")
    if sweep_metric:
        assert (sweep_metric["name"], sweep_metric.get("goal", "minimize")) == METRIC[benchmark]
