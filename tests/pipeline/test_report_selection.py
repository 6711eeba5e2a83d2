"""Which runs a paper table is built from: by default the runs outside sweeps, and among a cell's configs only
those with the full seed set compete (a one-seed sweep trial never wins on a lucky or tied validation score);
--sweep, --preset, --tag and --group choose the runs; the row shows its config and the footnote the choice."""
import pytest

from infmask import reporting as R
from infmask.cli import main
from infmask.store import ResultsStore
from helpers.report_fixtures import TRI_TASKS, cfg_for

SWEEP = "tri-explore-1"


def _tri(store, seed, overrides, val, share, sweep=None):
    cfg = cfg_for("trifeatures", "infmasking", seed, overrides)
    store.upsert_run(cfg, status="finished", sweep_id=sweep)
    test = {t: {"acc1": share if t == "share" else 0.5} for t in TRI_TASKS}
    test["all"] = {"acc1": sum(v["acc1"] for v in test.values()) / 4}
    rows = [("test", t, m, v) for t, mv in test.items() for m, v in mv.items()]
    rows += [("val", t, "acc1", val) for t in (*TRI_TASKS, "all")]
    store.log_metrics(cfg.run_id, "probe", rows)
    return cfg


@pytest.fixture
def ws(tmp_path):
    """InfMasking, unbiased: the table's config (rho 0.7, 2 seeds, val 0.60, as `infmask run` makes it), a
    one-seed sweep trial that ties it on validation and another that beats it (rho 0.3, 0.5), a tagged cpu run."""
    root = tmp_path / "ws"
    store = ResultsStore(root / "results.sqlite")
    store.upsert_sweep(SWEEP, name="explore", file="x.yaml", benchmark="trifeatures", method="infmasking",
                       config={"method": "grid"}, metric_name="probe/val/acc1", metric_goal="maximize",
                       status="finished")
    main_cfg = [_tri(store, s, {"model.mask_ratio": 0.7}, 0.60, 0.80 + 0.02 * i) for i, s in enumerate((42, 43))]
    tie = _tri(store, 42, {"model.mask_ratio": 0.5}, 0.60, 0.30, sweep=SWEEP)
    lucky = _tri(store, 42, {"model.mask_ratio": 0.3}, 0.95, 0.20, sweep=SWEEP)
    for i, (cfg, val) in enumerate(((tie, 0.60), (lucky, 0.95))):
        store.upsert_trial(SWEEP, i, f"{SWEEP}-{i}", {"model.mask_ratio": cfg.model.mask_ratio, "seed": 42},
                           "finished", run_id=cfg.run_id, metric_value=val, returncode=0)
    tagged = _tri(store, 42, {"tracking.tags": ["paper-run"], "data.max_size": 256}, 0.40, 0.70)
    return {"root": root, "main": main_cfg[0], "tie": tie, "lucky": lucky, "tagged": tagged}


def _row(rep):
    return next(r for r in rep.rows if r.model == "InfMasking" and r.ours)


def test_fewer_seeds_never_beat_the_full_seed_set(ws):
    results = R.load_results(ws["root"])
    rows = results[~results["biased"]]
    # all four configs compete (sweep runs included): the 2-seed config wins over the 1-seed tie and the 1-seed
    # higher validation score alike
    sel = R.select_config(rows, "acc1", "max")
    assert sel.config_hash == ws["main"].config_hash()
    assert len(sel.candidates) == 4


def test_default_table_reads_runs_outside_sweeps_and_says_so(ws):
    rep = R.build_table(R.load_results(ws["root"]), "trifeatures")
    cell = _row(rep).cells["redundancy"]
    assert cell.config_hash == ws["main"].config_hash() and cell.n == 2 and cell.config_label == "ρ=0.7 τ=0.1"
    assert "runs outside sweeps" in rep.footnote() and "2 sweep-trial run(s) left out" in rep.footnote()
    assert "full seed set" in rep.footnote()
    md = rep.to_markdown()
    assert "| config |" in md and "ρ=0.7 τ=0.1" in md


def test_report_options_choose_the_runs(ws, capsys):
    root = str(ws["root"])
    assert main(["report", "--table", "trifeatures", "--sweep", SWEEP, "--root", root, "--no-wandb"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("| InfMasking | smoke"))
    assert f"ρ=0.3 τ=0.1, sweep {SWEEP}" in line and f"trials of sweep {SWEEP}" in out

    assert main(["report", "--table", "trifeatures", "--tag", "paper-run", "--root", root, "--no-wandb"]) == 0
    rep = R.build_table(R.load_results(root), "trifeatures", runs=R.RunFilter(tags=("paper-run",)))
    assert _row(rep).cells["redundancy"].config_hash == ws["tagged"].config_hash()
    assert "tag paper-run" in capsys.readouterr().out

    group = ws["main"].group
    assert main(["report", "--table", "trifeatures", "--group", group, "--root", root, "--no-wandb"]) == 0
    assert f"group {group}" in capsys.readouterr().out
    assert main(["report", "--table", "trifeatures", "--preset", "cpu", "--root", root, "--no-wandb"]) == 3
    assert "nothing to report" in capsys.readouterr().err
    assert main(["report", "--table", "trifeatures", "--sweep", "nope", "--root", root, "--no-wandb"]) == 2
    assert "unknown sweep id 'nope'" in capsys.readouterr().err
