"""Results store: transactional, WAL, several processes writing at once lose and duplicate nothing."""
import multiprocessing as mp

import pytest

from infmask.config import build_config
from infmask.store import ResultsStore


def _writer(db, worker, n):
    store = ResultsStore(db)
    for seed in range(n):
        cfg = build_config("trifeatures", "infmasking", "smoke", seed=1000 * worker + seed)
        store.upsert_run(cfg, status="running")
        store.log_metrics(cfg.run_id, "probe", [("test", t, "acc1", 0.5 + seed / 100) for t in ("share", "synergy")])
        store.log_metrics(cfg.run_id, "probe", [("test", "share", "acc1", 0.9)])  # retried write: replaces
        store.set_status(cfg.run_id, "finished")


def test_concurrent_writers_lose_and_duplicate_nothing(tmp_path):
    db = tmp_path / "results.sqlite"
    ResultsStore(db)
    workers, n = 6, 15
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(db, w, n)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    store = ResultsStore(db)
    runs = store.runs_frame()
    assert len(runs) == workers * n and runs.run_id.is_unique and set(runs.status) == {"finished"}
    df = store.results_frame("trifeatures")
    assert len(df) == workers * n * 2
    assert not df.duplicated(["run_id", "task", "metric"]).any()
    assert (df[df.task == "share"].value == 0.9).all()
    assert store.query("PRAGMA journal_mode")[0][0] == "wal"


def test_results_frame_is_seed_level(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    for seed in (42, 43):
        cfg = build_config("trifeatures", "comm", "smoke", seed=seed)
        store.upsert_run(cfg, status="finished")
        store.log_metrics(cfg.run_id, "probe", [("test", "synergy", "acc1", 0.6 + seed / 1000)])
        store.log_metrics(cfg.run_id, "pretrain", [("val", "all", "acc1", 0.5)], step=0)
    df = store.results_frame("trifeatures")
    assert sorted(df.seed) == [42, 43] and df.config_hash.nunique() == 1 and set(df.stage) == {"probe"}
    curves = store.results_frame("trifeatures", stage="pretrain", final_only=False)
    assert set(curves.step) == {0}


def test_eight_processes_opening_a_new_store_at_the_same_instant_never_fail(tmp_path):
    # A fresh workspace's first trials or array jobs all open (and so create) the store together: 8 processes,
    # 50 new stores, each opened by all 8 at once behind a barrier, then written once. SQLite's switch to WAL does
    # not wait on the busy timeout; before the fix 0.5-4 % of these opens failed with "database is locked".
    from helpers.store_opener import open_rounds

    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(8), ctx.Queue()
    procs = [ctx.Process(target=open_rounds, args=(str(tmp_path), 50, barrier, queue, w)) for w in range(8)]
    for p in procs:
        p.start()
    failures = [f for _ in procs for f in queue.get(timeout=300)]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert failures == [], f"{len(failures)} of 400 opens failed: {failures[:5]}"
    for r in range(50):
        assert len(ResultsStore(tmp_path / f"round{r}.sqlite").query("SELECT * FROM sweeps")) == 8


def test_damaged_store_is_a_usage_error_naming_the_file(tmp_path):
    from infmask.errors import UsageError

    db = tmp_path / "results.sqlite"
    db.write_bytes(b"this is not an SQLite database" * 200)
    with pytest.raises(UsageError, match="results.sqlite is damaged or not a results store.*move it aside"):
        ResultsStore(db)
    store_dir = tmp_path / "as_dir.sqlite"
    store_dir.mkdir()
    with pytest.raises(UsageError, match="cannot open the results store"):
        ResultsStore(store_dir)


def test_a_trial_written_inside_a_claim_is_the_same_row_as_one_written_alone(tmp_path):
    """One upsert for both paths: inside an open transaction (a sweep runner's claim) and on its own; a retried
    write replaces the row and keeps a run id it already knows."""
    store = ResultsStore(tmp_path / "results.sqlite")
    store.upsert_sweep("s", name="s", file="-", benchmark="trifeatures", method="infmasking", config={},
                       metric_name="probe/val/acc1", metric_goal="maximize", status="running")
    with store.transaction() as conn:
        assert store.trials("s", conn=conn) == []
        store.upsert_trial("s", 0, "s-0000", {"b": 2, "a": 1}, "running", conn=conn)
        assert [r["trial_id"] for r in store.trials("s", conn=conn)] == ["s-0000"]   # seen inside the claim
    store.upsert_trial("s", 0, "s-0000", {"b": 2, "a": 1}, "finished", run_id="r0", metric_value=0.5, returncode=0)
    store.upsert_trial("s", 0, "s-0000", {"b": 2, "a": 1}, "finished", metric_value=0.6, returncode=0)
    (row,) = store.trials("s")
    assert (row["status"], row["run_id"], row["metric_value"], row["params_json"]) == (
        "finished", "r0", 0.6, '{"a": 1, "b": 2}')
    assert store.get_sweep("s")["metric_goal"] == "maximize" and store.get_sweep("other") is None
    (joined,) = store.trials_with_sweeps(["s"])
    assert (joined["sweep_name"], joined["s_benchmark"], joined["metric_name"]) == (
        "s", "trifeatures", "probe/val/acc1")
    assert store.trials_with_sweeps([]) == [] and len(store.trials_with_sweeps()) == 1
    assert store.sweeps_with_trial_counts()[0]["n_trials"] == 1


def test_counts_and_delete_metrics(tmp_path):
    store = ResultsStore(tmp_path / "results.sqlite")
    runs = []
    for seed, status in ((1, "finished"), (2, "failed")):
        cfg = build_config("trifeatures", "infmasking", "smoke", seed=seed)
        store.upsert_run(cfg, status=status)
        store.log_metrics(cfg.run_id, "probe", [("test", "all", "acc1", 0.5)])
        store.log_metrics(cfg.run_id, "pretrain", [("train", "all", "loss", 1.0)], step=0)
        runs.append(cfg.run_id)
    assert store.counts() == {"runs": 2, "results": 1, "curves": 2, "sweeps": 0, "trials": 0}   # failed: no result
    assert {r["run_id"] for r in store.runs()} == set(runs)
    store.delete_metrics(runs[0])
    assert not store.has_metrics(runs[0], "probe") and store.has_metrics(runs[1], "probe")
    assert store.counts()["curves"] == 1
