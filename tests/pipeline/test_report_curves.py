"""The training-curves figure draws every group (or says which ones it shows) and labels them in
hyper-parameters (method, rho, tau, biased data), never by hash."""
import re

import pytest

from infmask import reporting as R
from infmask.store import ResultsStore
from helpers.report_fixtures import add_run, assert_png_not_blank, cfg_for

RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@pytest.fixture
def curves(tmp_path):
    """Ten groups: InfMasking at nine mask ratios (2 seeds each) and CoMM on biased data."""
    store = ResultsStore(tmp_path / "ws" / "results.sqlite")
    for rho in RATIOS:
        for seed in (42, 43):
            run_id = add_run(store, cfg_for("trifeatures", "infmasking", seed, {"model.mask_ratio": rho}),
                             {"all": {"acc1": 0.5}}, {"all": {"acc1": 0.5}}, curves_epochs=3)
            store.log_metrics(run_id, "pretrain", [("val", "all", "acc1", rho)], step=2)   # last epoch
    add_run(store, cfg_for("trifeatures", "comm", 42, {"data.biased": True}), {"all": {"acc1": 0.5}},
            {"all": {"acc1": 0.3}}, curves_epochs=3)
    return R.load_curves(tmp_path / "ws")


def _legend(monkeypatch, curves, tmp_path, **kw) -> tuple[list[str], str]:
    """Draw the figure and read back its legend entries and title."""
    drawn = {}

    def keep(fig, path):
        drawn["fig"] = fig
        return path
    monkeypatch.setattr(R.figures, "save_figure", keep)
    R.plot_training_curves(curves, "trifeatures: training curves", tmp_path / "c.png", **kw)
    fig = drawn["fig"]
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    texts = [t.get_text() for lg in legends for t in lg.get_texts()]
    return texts, fig._suptitle.get_text()


def test_every_group_in_hyper_parameters(curves, tmp_path, monkeypatch):
    texts, _ = _legend(monkeypatch, curves, tmp_path)
    assert len(texts) == len(RATIOS) + 1
    for rho in RATIOS:
        assert f"infmasking ρ={rho:g} τ=0.1 unbiased (n=2)" in texts
    assert "comm τ=0.1 biased (n=1)" in texts
    hashes = set(curves["config_hash"])
    assert not any(h[:6] in t for h in hashes for t in texts)


def test_a_selection_is_stated(curves, tmp_path, monkeypatch):
    texts, title = _legend(monkeypatch, curves, tmp_path, max_groups=3)
    assert len(texts) == 3 and re.search(r"3 of 10 groups", title)
    assert {t.split(" ")[1] for t in texts} == {"ρ=0.9", "ρ=0.8", "ρ=0.7"}   # the best by last validation


def test_figure_is_written(curves, tmp_path):
    png = R.plot_training_curves(curves, "trifeatures: training curves", tmp_path / "curves.png")
    assert_png_not_blank(png)
    assert {"config", "seeds"} <= set(R.curve_groups(curves).columns)


def test_task_curves_one_panel_per_task_and_the_synergy_auroc(tmp_path, monkeypatch):
    """The per-task figure: a panel per probe task and the synergy AUROC, the values as logged (x100)."""
    store = ResultsStore(tmp_path / "ws" / "results.sqlite")
    for method, auc in (("infmasking", 0.8), ("comm", 0.7)):
        run_id = add_run(store, cfg_for("trifeatures", method, 42, {"data.biased": True}), {"all": {"acc1": 0.5}},
                         {"all": {"acc1": 0.5}}, curves_epochs=2)
        for step in (0, 1):
            rows = [("val", t, "acc1", 0.1 * (k + 1) + 0.1 * step) for k, t in
                    enumerate(("share", "unique1", "unique2", "synergy"))]
            store.log_metrics(run_id, "pretrain", rows + [("val", "synergy", "roc_auc", auc)], step=step)
    curves = R.load_curves(tmp_path / "ws")
    assert R.task_panels(curves) == [("share", "acc1"), ("unique1", "acc1"), ("unique2", "acc1"),
                                     ("synergy", "acc1"), ("synergy", "roc_auc")]
    drawn = {}
    monkeypatch.setattr(R.figures, "save_figure", lambda fig, path: drawn.setdefault("fig", fig) and path)
    R.plot_task_curves(curves, "trifeatures: probes per task", tmp_path / "t.png")
    axes = drawn["fig"].axes
    assert [a.get_title() for a in axes] == ["share: acc1 ×100", "unique1: acc1 ×100", "unique2: acc1 ×100",
                                             "synergy: acc1 ×100", "synergy: roc_auc ×100"]
    auc_means = sorted(round(max(l.get_ydata()), 6) for l in axes[4].get_lines() if l.get_linewidth() == 2)
    assert auc_means == [70.0, 80.0]
    labels = [t.get_text() for t in drawn["fig"].legends[0].get_texts()]
    assert sorted(labels) == ["comm τ=0.1 biased (n=1)", "infmasking ρ=0.7 τ=0.1 biased (n=1)"]
    monkeypatch.undo()
    assert_png_not_blank(R.plot_task_curves(curves, "t", tmp_path / "t.png"))
