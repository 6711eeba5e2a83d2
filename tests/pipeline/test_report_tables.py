"""`infmask report --table`: sample std over seeds, config chosen on validation only, every column rendered with
the published value and the difference, empty store -> exit 3."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from infmask import reporting as R
from infmask.cli import main
from infmask.store import ResultsStore
from helpers.report_fixtures import (SEEDS, TEST_SHARE, TRI_A, TRI_B, build_mmimdb, build_multibench, build_workspace,
                                  cfg_for)


@pytest.fixture(scope="module")
def tri_built(tmp_path_factory):
    root = tmp_path_factory.mktemp("tri") / "ws"
    build_workspace(root, parts=("trifeatures",))
    return root


@pytest.fixture
def tri_root(tri_built, tmp_path):
    """A private copy of the Trifeatures workspace (tests write reports and W&B runs into it)."""
    shutil.copytree(tri_built, tmp_path / "ws")
    return tmp_path / "ws"


def _cell(rep, model, col, preset="smoke"):
    row = next(r for r in rep.rows if r.model == model and r.ours and r.preset == preset)
    return row.cells[col]


def test_seed_stats_is_sample_std():
    st = R.seed_stats([90.0, 92.0, 97.0])
    assert st.n == 3 and st.mean == pytest.approx(93.0)
    assert st.std == pytest.approx(np.std([90, 92, 97], ddof=1)) and st.std != pytest.approx(np.std([90, 92, 97]))
    assert R.seed_stats([1.0]).std is None and R.seed_stats([]).mean is None


def test_best_validation_config_is_reported_never_the_best_test(tri_root):
    results = R.load_results(tri_root)
    rep = R.build_table(results, "trifeatures")
    hash_a = cfg_for("trifeatures", "infmasking", 42, TRI_A).config_hash()
    hash_b = cfg_for("trifeatures", "infmasking", 42, TRI_B).config_hash()
    red = _cell(rep, "InfMasking", "redundancy")
    # A wins on validation (0.80 vs 0.70), B on test (99 vs 93): A must be reported
    assert red.config_hash == hash_a and red.n_configs == 2
    assert red.mean == pytest.approx(np.mean(TEST_SHARE["A"]) * 100)
    assert red.std == pytest.approx(np.std(TEST_SHARE["A"], ddof=1) * 100)
    assert red.n == 3 and red.seeds == SEEDS and red.val_score == pytest.approx(0.80)
    # uniqueness comes from the same unbiased choice; synergy from the biased runs only
    assert _cell(rep, "InfMasking", "uniqueness").config_hash == hash_a
    syn = _cell(rep, "InfMasking", "synergy")
    assert syn.config_hash not in (hash_a, hash_b) and syn.mean == pytest.approx(72.0) and syn.std == pytest.approx(2.0)

    # the choice does not move when test values change, nor when the test rows are gone altogether
    rows = results[(results.benchmark == "trifeatures") & (results.method == "infmasking") & ~results.biased]
    flipped = rows.copy()
    is_test = flipped.split == "test"
    flipped.loc[is_test, "value"] = np.where(flipped.loc[is_test, "config_hash"] == hash_a, 0.0, 1.0)
    for variant in (rows, flipped, rows[rows.split != "test"]):
        assert R.select_config(variant, "acc1", "max").config_hash == hash_a


def test_selection_follows_the_monitored_direction():
    def frame(vals):
        return pd.DataFrame([{"run_id": f"{h}{i}", "config_hash": h, "split": "val", "task": "all",
                              "metric": "mse", "value": v, "monitor": "mse", "monitor_mode": "min"}
                             for h, vs in vals.items() for i, v in enumerate(vs)])
    sel = R.select_config(frame({"lo": [1e-4, 2e-4], "hi": [5e-4, 6e-4]}))
    assert (sel.config_hash, sel.monitor, sel.goal) == ("lo", "mse", "min")


def test_trifeatures_table_renders_every_column_with_paper_values(tri_root):
    rep = R.build_table(R.load_results(tri_root), "trifeatures")
    labels = [r.label for r in rep.rows]
    assert labels == ["Cross", "Cross+Self", "FactorCL", "MAE", "CoMM", "InfMasking"]
    md = rep.to_markdown()
    for text in ("Redundancy (shape) ↑", "Uniqueness (texture) ↑", "Synergy (colour+texture) ↑", "paper", "Δ",
                 "sample std (ddof=1)", "♣", "| FactorCL | published |"):
        assert text in md
    inf = next(r for r in rep.rows if r.model == "InfMasking")
    line = next(line for line in md.splitlines() if line.startswith("| InfMasking"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    # the row names its configs: A (rho 0.5) for the unbiased columns, the biased runs' config for synergy
    assert cells[1:4] == ["smoke", "clean", "redundancy, uniqueness: ρ=0.5 τ=0.1; synergy: ρ=0.7 τ=0.1"]
    red = inf.cells["redundancy"]
    assert red.paper_mean == 99.9 and red.paper_std == 0.09
    assert cells[4].strip("*") == f"{red.mean:.1f} ± {red.std:.1f}"
    assert cells[5] == "99.9 ± 0.1" and cells[6] == f"{red.mean - 99.9:+.1f}" and cells[7] == "3"
    frame = rep.to_frame()
    assert set(frame.column) == {"redundancy", "uniqueness", "synergy"}
    ours = frame[frame.source == "ours"]
    assert ours.ours_mean.notna().all() and ours.paper_mean.notna().all()
    assert np.allclose(ours["diff"], ours.ours_mean - ours.paper_mean)
    assert (frame[frame.model == "MAE"].ours_mean.isna()).all()
    tex = rep.to_latex()
    assert "\\begin{tabular}" in tex and "$\\pm$" in tex and "InfMasking" in tex


def test_multibench_mmimdb_tables_fill_every_cell(tmp_path):
    store = ResultsStore(tmp_path / "results.sqlite")
    build_multibench(store)
    build_mmimdb(store)
    results = R.load_results(store)

    mb = R.build_table(results, "multibench")
    inf = next(r for r in mb.rows if r.model == "InfMasking")
    assert all(inf.cells[k].mean is not None for k in ("vt_mse", "mimic", "mosi", "humor", "sarcasm", "avg"))
    assert inf.cells["vt_mse"].mean == pytest.approx(np.mean([4.0, 4.4]))          # MSE x1e4
    assert inf.cells["vt_mse"].selected_on.startswith("val mse") and "min" in inf.cells["vt_mse"].selected_on
    four = [inf.cells[k].mean for k in ("mimic", "mosi", "humor", "sarcasm")]
    assert inf.cells["avg"].mean == pytest.approx(np.mean(four)) and inf.cells["avg"].paper_mean == 67.05
    assert inf.cells["avg"].diff == pytest.approx(np.mean(four) - 67.05)
    for r in mb.rows:
        if r.ours:
            assert all(c.mean is not None and c.paper_mean is not None for c in r.cells.values()), r.label

    mb3 = R.build_table(results, "multibench3")
    labels = [r.label for r in mb3.rows]
    assert labels == ["Cross (2)", "Cross+Self (2)", "CoMM (2)", "InfMasking (2)", "CMC (3)", "CoMM (3)",
                      "InfMasking (3)"]
    for r in mb3.rows:
        assert all(c.mean is not None and c.paper_mean is not None for c in r.cells.values()), r.label
    assert next(r for r in mb3.rows if r.label == "InfMasking (3)").cells["vt_cp"].paper_mean == 94.1

    mm = R.build_table(results, "mmimdb")
    md = mm.to_markdown()
    assert "InfMasking (CLIP backbone) (V+L) [cached features]" in md and "CLIP (L)" in md
    ours = [r for r in mm.rows if r.ours]
    assert len(ours) == 4 and sum(r.cached for r in ours) == 2
    assert all(r.cells[k].mean is not None and r.cells[k].paper_mean is not None
               for r in ours for k in ("weighted_f1", "macro_f1"))
    assert set(mm.to_frame().query("source == 'ours'")["mode"]) == {"online", "cached features"}


def test_report_cli_writes_md_csv_tex_and_prints_markdown(tri_root, capsys):
    assert main(["report", "--table", "trifeatures", "--root", str(tri_root), "--no-wandb"]) == 0
    out = capsys.readouterr().out
    assert "### Trifeatures" in out and "| InfMasking | smoke | clean |" in out
    reports = tri_root / "reports"
    assert (reports / "table_trifeatures.md").read_text().strip() == out.strip()
    csv = pd.read_csv(reports / "table_trifeatures.csv")
    assert {"ours_mean", "ours_std", "n_seeds", "paper_mean", "diff", "preset", "protocol", "std_kind"} <= set(csv)
    assert "\\toprule" in (reports / "table_trifeatures.tex").read_text()
    assert not list(reports.glob("*.tmp")) and not list(reports.glob(".*"))
    # --table all reports what exists and skips the rest
    assert main(["report", "--root", str(tri_root), "--no-wandb"]) == 0
    assert not (reports / "table_mmimdb.md").exists()


def test_empty_store_exits_3_and_bad_table_exits_2(tmp_path, tri_root, capsys):
    empty = tmp_path / "empty"
    assert main(["report", "--root", str(empty), "--no-wandb"]) == 3
    assert "nothing to report" in capsys.readouterr().err
    ResultsStore(empty / "results.sqlite")   # a store with no rows at all
    assert main(["report", "--table", "trifeatures", "--root", str(empty), "--no-wandb"]) == 3
    assert main(["report", "--table", "mmimdb", "--root", str(tri_root), "--no-wandb"]) == 3
    assert "mmimdb" in capsys.readouterr().err
    assert main(["report", "--table", "nope", "--root", str(tri_root), "--no-wandb"]) == 2
    assert "valid: trifeatures" in capsys.readouterr().err


def test_report_logs_a_wandb_table_offline(tri_root, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tri_root)
    assert main(["report", "--table", "trifeatures", "--root", str(tri_root)]) == 0
    err = capsys.readouterr().err
    assert "wandb sync" in err
    runs = list((tri_root / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--summary", "--json", str(runs[0])],
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:  # older/newer wandb without `leet`: the run directory is the evidence
        pytest.skip(f"wandb leet inspect unavailable: {out.stderr[-200:]}")
    info = json.loads(out.stdout)
    assert "report/table_trifeatures" in info["summary"]
    assert info["summary"]["report/table_trifeatures"].get("_type") == "table-file"


def test_wandb_disabled_writes_no_run(tri_root, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert main(["report", "--table", "trifeatures", "--root", str(tri_root)]) == 0
    assert not (tri_root / "wandb").exists()
