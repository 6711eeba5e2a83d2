"""`infmask report --sweep`: best (mask_ratio, temperature) by validation mean over seeds, test mean ± std there,
and a heat map PNG that is not blank."""
import pytest

from infmask import reporting as R
from infmask.cli import main
from helpers.report_fixtures import SWEEP_BEST, SWEEP_ID, assert_png_not_blank, build_workspace


@pytest.fixture(scope="module")
def sweep_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep") / "ws"
    build_workspace(root, parts=("sweep",))
    return root


def test_sweep_grid_and_best_point(sweep_root):
    trials = R.load_sweep_trials(sweep_root, [SWEEP_ID])
    assert len(trials) == 9 and trials["val"].notna().sum() == 8        # the failed trial has no value
    rep = R.sweep_report(trials, SWEEP_ID, R.load_results(sweep_root))
    assert len(rep.grid) == 4 and set(rep.grid["n"]) == {2}
    assert (rep.best["mask_ratio"], rep.best["temperature"]) == SWEEP_BEST
    assert rep.best["val_mean"] == pytest.approx(0.905) and rep.best["test_mean"] == pytest.approx(0.855)
    assert rep.best["test_std"] == pytest.approx(R.seed_stats([0.85, 0.86]).std)
    assert set(rep.best_tasks["task"]) == {"share", "unique1", "unique2", "synergy"}


def test_sweep_report_cli_writes_heatmap(sweep_root, capsys):
    assert main(["report", "--sweep", SWEEP_ID, "--root", str(sweep_root), "--no-wandb"]) == 0
    out = capsys.readouterr().out
    assert "mask_ratio = 0.7, temperature = 0.05" in out and "test 85.5 ± 0.7 (n=2)" in out
    assert "sample std (ddof=1)" in out
    png = sweep_root / "reports" / f"sweep_{SWEEP_ID}_heatmap.png"
    assert_png_not_blank(png)
    assert (sweep_root / "reports" / f"sweep_{SWEEP_ID}.csv").read_text().count("True") == 1   # one best row

    assert main(["report", "--sweep", "all", "--benchmark", "trifeatures", "--root", str(sweep_root),
                 "--no-wandb"]) == 0
    assert main(["report", "--sweep", "all", "--benchmark", "mosi", "--root", str(sweep_root), "--no-wandb"]) == 3
    assert main(["report", "--sweep", "nope", "--root", str(sweep_root), "--no-wandb"]) == 2
    assert SWEEP_ID in capsys.readouterr().err


def test_sensitivity_plot(sweep_root, tmp_path):
    rep = R.sweep_report(R.load_sweep_trials(sweep_root), "all")
    assert_png_not_blank(R.plot_sensitivity(rep.grid, rep.goal, rep.metric, "t", tmp_path / "s.png"))
