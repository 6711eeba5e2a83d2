"""Figure honesty: heat-map cells without a value say why (not run, running, failed), sweeps with different fixed
parameters are not pooled silently, and the seed strip plot shows the published std and the chance level."""
import pytest

from infmask import reporting as R
from infmask.cli import main
from infmask.store import ResultsStore
from helpers.report_fixtures import TRI_TASKS, add_run, build_workspace, cfg_for


def _capture(monkeypatch) -> dict:
    drawn = {}

    def keep(fig, path):
        drawn.setdefault("figs", []).append(fig)
        return path
    monkeypatch.setattr(R.figures, "save_figure", keep)
    return drawn


def _texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts] + [fig.axes[0].get_title()]


def _sweep(store, sweep_id, preset, points, failed=(), mrs=(0.3, 0.7, 0.9), temps=(0.05, 0.2)):
    """A grid sweep over mrs x temps, of which `points` finished (one seed) and `failed` failed."""
    config = {"method": "grid", "metric": {"name": "probe/val/acc1", "goal": "maximize"},
              "parameters": {"benchmark": {"value": "trifeatures"}, "method": {"value": "infmasking"},
                             "preset": {"value": preset}, "seed": {"value": 42},
                             "model.mask_ratio": {"values": list(mrs)}, "model.temperature": {"values": list(temps)}}}
    store.upsert_sweep(sweep_id, name=sweep_id, file=f"{sweep_id}.yaml", benchmark="trifeatures",
                       method="infmasking", config=config, metric_name="probe/val/acc1", metric_goal="maximize",
                       status="running")
    for i, (mr, t) in enumerate(points):
        cfg = cfg_for("trifeatures", "infmasking", 42, {"model.mask_ratio": mr, "model.temperature": t,
                                                        "data.max_size": 64 if preset == "smoke" else 96})
        add_run(store, cfg, {k: {"acc1": 0.5} for k in (*TRI_TASKS, "all")}, {"all": {"acc1": 0.5 + mr / 10}},
                tasks=TRI_TASKS)
        store.upsert_run(cfg, status="finished", sweep_id=sweep_id)
        store.upsert_trial(sweep_id, i, f"{sweep_id}-{i}", {"model.mask_ratio": mr, "model.temperature": t,
                                                            "seed": 42, "preset": preset}, "finished",
                           run_id=cfg.run_id, metric_value=0.5 + mr / 10, returncode=0)
    for j, (mr, t) in enumerate(failed, start=len(points)):
        store.upsert_trial(sweep_id, j, f"{sweep_id}-{j}", {"model.mask_ratio": mr, "model.temperature": t,
                                                            "seed": 42, "preset": preset}, "failed", returncode=1)


@pytest.fixture
def two_sweeps(tmp_path):
    root = tmp_path / "ws"
    store = ResultsStore(root / "results.sqlite")
    _sweep(store, "grid-smoke", "smoke", [(0.3, 0.05), (0.7, 0.05)], failed=[(0.9, 0.2)])
    _sweep(store, "grid-cpu", "cpu", [(0.3, 0.2), (0.7, 0.2)])
    return root


def test_heatmap_cells_without_a_value_say_why(two_sweeps, monkeypatch):
    drawn = _capture(monkeypatch)
    assert main(["report", "--sweep", "grid-smoke", "--root", str(two_sweeps), "--no-wandb"]) == 0
    texts = _texts(drawn["figs"][0])
    assert texts.count("failed") == 1 and texts.count("not run") == 3   # 3 x 2 grid: 2 values, 1 failed
    assert "preset=smoke" in texts[-1]


def test_sweeps_with_different_fixed_parameters_are_not_pooled(two_sweeps, monkeypatch, capsys):
    drawn = _capture(monkeypatch)
    assert main(["report", "--sweep", "all", "--benchmark", "trifeatures", "--root", str(two_sweeps),
                 "--no-wandb"]) == 0
    titles = [f.axes[0].get_title().replace("\n", " ") for f in drawn["figs"]]
    assert len(titles) == 2 and not any("pooled" in t for t in titles)      # smoke and cpu stay apart
    assert any("preset=smoke" in t for t in titles) and any("preset=cpu" in t for t in titles)
    capsys.readouterr()

    store = ResultsStore(two_sweeps / "results.sqlite")
    _sweep(store, "grid-smoke-2", "smoke", [(0.3, 0.2)])
    drawn.clear()
    assert main(["report", "--sweep", "all", "--benchmark", "trifeatures", "--root", str(two_sweeps),
                 "--no-wandb"]) == 0
    titles = [f.axes[0].get_title().replace("\n", " ") for f in drawn["figs"]]
    pooled = [t for t in titles if "2 sweeps pooled" in t]
    assert len(pooled) == 1 and "preset=smoke" in pooled[0] and "grid-smoke-2" in pooled[0]
    assert "Fixed: preset=smoke; pooled sweeps: grid-smoke, grid-smoke-2." in capsys.readouterr().out


def test_seed_strips_show_published_std_and_chance(tmp_path, monkeypatch):
    root = tmp_path / "ws"
    build_workspace(root, parts=("trifeatures",))
    rep = R.build_table(R.load_results(root), "trifeatures")
    drawn = _capture(monkeypatch)
    R.plot_seed_strips(rep, tmp_path / "s.png")
    fig = drawn["figs"][0]
    synergy = next(ax for ax in fig.axes if ax.get_title().startswith("Synergy"))
    vertical = [ln.get_xdata() for ln in synergy.get_lines() if len(set(ln.get_xdata())) == 1]
    assert any(x[0] == 50.0 for x in vertical)                                  # the chance line
    assert any(t.get_text() == "chance 50" for t in synergy.texts)
    bars = [c for c in synergy.containers if c.__class__.__name__ == "ErrorbarContainer"]
    inf = next(r for r in rep.rows if r.model == "InfMasking")
    assert len(bars) >= 4 and inf.cells["synergy"].paper_std is not None       # published mean ± std per row
