"""Synthetic result stores for the report and notebook tests, written through the real ResultsStore API with real
Config objects (smoke preset). Imported by tests/test_report*.py and tests/test_notebooks*.py; holds no tests.

Only trifeatures has a config file so far, so rows of the other benchmarks (and CMC) reuse its config with the
benchmark (method) name replaced (the store needs a run id, a config hash and the resolved dict, not a trainable config).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from infmask.config import build_config
from infmask.store import ResultsStore

TRI_TASKS = ("share", "unique1", "unique2", "synergy")
SEEDS = (42, 43, 44)

# Trifeatures, infmasking, unbiased: two configs. "A" wins on validation, "B" has the better TEST numbers, so a
# report that peeked at test would pick B.
TRI_A = {"model.mask_ratio": 0.5}
TRI_B = {"model.mask_ratio": 0.7}
VAL = {"A": 0.80, "B": 0.70}          # mean val acc1 ('all') per config
TEST_SHARE = {"A": [0.90, 0.92, 0.97], "B": [0.99, 0.99, 0.99]}


def cfg_for(benchmark: str, method: str, seed: int, overrides: dict | None = None):
    base_method = "cross" if method == "cmc" else method   # trifeatures.yaml does not list cmc
    cfg = build_config("trifeatures", base_method, "smoke", seed=seed, overrides=dict(overrides or {}))
    if (benchmark, method) != (cfg.benchmark, cfg.method):
        cfg = dataclasses.replace(cfg, benchmark=benchmark, method=method)
    return cfg


def add_run(store: ResultsStore, cfg, test: dict, val: dict, tasks=("all",), metrics=("acc1",),
            curves_epochs: int = 0) -> str:
    """test/val: {task: {metric: value}}; 'all' rows are what the pipeline writes as the mean over tasks."""
    store.upsert_run(cfg, status="finished")
    rows = [("test", t, m, v) for t, mv in test.items() for m, v in mv.items()]
    rows += [("val", t, m, v) for t, mv in val.items() for m, v in mv.items()]
    rows += [("val", t, "C", 1.0) for t in tasks if t != "all"]
    store.log_metrics(cfg.run_id, "probe", rows)
    for e in range(curves_epochs):
        store.log_metrics(cfg.run_id, "pretrain", [
            ("train", "all", "loss", 5.0 / (e + 1) + cfg.seed / 1000), ("train", "all", "ssl_acc", 0.1 * e),
            ("train", "all", "perf/samples_per_s", 100.0 + 10 * e + cfg.seed % 7),
            ("train", "all", "perf/step_time_s", 0.2), ("train", "all", "perf/data_wait_s", 0.01),
            ("train", "all", "lr", 1e-3), ("val", "all", "loss", 5.5 / (e + 1)),
            ("val", "all", "acc1", 0.4 + 0.1 * e + cfg.seed / 10000)], step=e)
    return cfg.run_id


def _tri(store, method, seed, overrides, val_all, test_by_task, epochs=3):
    cfg = cfg_for("trifeatures", method, seed, overrides)
    test = {t: {"acc1": v, "acc": v, "roc_auc": min(1.0, v + 0.02)} for t, v in test_by_task.items()}
    test["all"] = {k: sum(test[t][k] for t in TRI_TASKS) / 4 for k in ("acc1", "acc", "roc_auc")}
    val = {t: {"acc1": val_all} for t in TRI_TASKS} | {"all": {"acc1": val_all, "acc": val_all}}
    return add_run(store, cfg, test, val, tasks=TRI_TASKS, curves_epochs=epochs)


def build_trifeatures(store: ResultsStore) -> None:
    for i, seed in enumerate(SEEDS):
        for name, ov in (("A", TRI_A), ("B", TRI_B)):
            _tri(store, "infmasking", seed, ov, VAL[name] + 0.01 * (i - 1),
                 {"share": TEST_SHARE[name][i], "unique1": 0.85 + 0.01 * i, "unique2": 0.5, "synergy": 0.5})
        _tri(store, "infmasking", seed, {"data.biased": True}, 0.6,
             {"share": 0.9, "unique1": 0.8, "unique2": 0.5, "synergy": 0.70 + 0.02 * i})
    for method, base in (("comm", 0.80), ("cross", 0.60), ("cross_self", 0.70)):
        for i, seed in enumerate(SEEDS[:2]):
            for biased in (False, True):
                _tri(store, method, seed, {"data.biased": biased}, base,
                     {"share": 0.95, "unique1": base + 0.01 * i, "unique2": 0.5, "synergy": base - 0.1 + 0.01 * i},
                     epochs=2)


MB = {  # benchmark -> (metric, values per seed for infmasking); others get an offset
    "visionandtouch": ("mse", [4.0e-4, 4.4e-4, 4.2e-4]),
    "mimic": ("acc1", [0.68, 0.67, 0.69]), "mosi": ("acc1", [0.62, 0.63, 0.64]),
    "humor": ("acc1", [0.60, 0.61, 0.62]), "sarcasm": ("acc1", [0.63, 0.64, 0.65]),
    "visionandtouch_bin": ("acc1", [0.86, 0.87, 0.88]), "humor_3mod": ("acc1", [0.63, 0.64, 0.65]),
    "visionandtouch_bin_3mod": ("acc1", [0.92, 0.93, 0.94]),
}


def build_multibench(store: ResultsStore) -> None:
    for bench, (metric, values) in MB.items():
        methods = ("infmasking", "comm", "cmc") if bench.endswith("3mod") else ("infmasking", "comm", "cross",
                                                                                "cross_self")
        ov = {"probe.monitor": "mse", "probe.mode": "min"} if metric == "mse" else {}
        for k, method in enumerate(methods):
            for seed, v in zip(SEEDS[:2], values):
                v = v * (1 + 0.2 * k) if metric == "mse" else v - 0.02 * k
                task = "ee_yaw_next" if metric == "mse" else "label"
                extra = {"r2": 0.5, "pearson_r": 0.7} if metric == "mse" else {"acc": v, "roc_auc": v}
                add_run(store, cfg_for(bench, method, seed, ov), {task: {metric: v, **extra}, "all": {metric: v}},
                        {"all": {metric: v * 1.05}}, tasks=(task,))


def build_mmimdb(store: ResultsStore) -> None:
    for method in ("infmasking", "comm"):
        for cached in (False, True):
            for seed in SEEDS[:2]:
                f1w, f1m = 0.55 + 0.01 * (seed - 42) + 0.02 * cached, 0.45 + 0.01 * (seed - 42)
                metrics = {"f1_weighted": f1w, "f1_mean": f1m, "acc1": 0.9, "acc1_subset": 0.1}
                add_run(store, cfg_for("mmimdb", method, seed, {"data.feature_cache": cached,
                                                                 "probe.monitor": "f1_mean"}),
                        {"all": metrics, "genres": metrics}, {"all": {"f1_mean": f1m}}, tasks=("genres",))


SWEEP_ID = "tri-grid-1"
SWEEP_GRID = [(mr, t) for mr in (0.3, 0.7) for t in (0.05, 0.2)]
SWEEP_BEST = (0.7, 0.05)


def build_sweep(store: ResultsStore, sweep_id: str = SWEEP_ID) -> None:
    """A 2x2 grid over (mask_ratio, temperature) x 2 seeds; the best validation point is SWEEP_BEST."""
    store.upsert_sweep(sweep_id, name="trifeatures-grid", file="sweeps/trifeatures.yaml", benchmark="trifeatures",
                       method="infmasking", config={"method": "grid", "metric": {"name": "probe/val/acc1",
                                                                                  "goal": "maximize"}},
                       metric_name="probe/val/acc1", metric_goal="maximize", status="finished")
    idx = 0
    for mr, t in SWEEP_GRID:
        for seed in (42, 43):
            val = 0.5 + 0.3 * (mr == 0.7) + 0.1 * (t == 0.05) + 0.01 * (seed - 42)
            params = {"model.mask_ratio": mr, "model.temperature": t, "seed": seed, "benchmark": "trifeatures",
                      "method": "infmasking", "preset": "smoke"}
            cfg = cfg_for("trifeatures", "infmasking", seed, {"model.mask_ratio": mr, "model.temperature": t,
                                                              "data.max_size": 64})
            test = {task: {"acc1": val - 0.05} for task in TRI_TASKS} | {"all": {"acc1": val - 0.05}}
            run_id = add_run(store, cfg, test, {"all": {"acc1": val}}, tasks=TRI_TASKS)
            store.upsert_run(cfg, status="finished", sweep_id=sweep_id)   # as a trial records its run
            store.upsert_trial(sweep_id, idx, f"{sweep_id}-{idx}", params, "finished", run_id=run_id,
                               metric_value=val, returncode=0)
            idx += 1
    store.upsert_trial(sweep_id, idx, f"{sweep_id}-{idx}", {"model.mask_ratio": 0.9, "model.temperature": 0.2,
                                                            "seed": 42}, "failed", returncode=1)


def assert_png_not_blank(path: Path, min_bytes: int = 5000) -> None:
    """A real picture: more than a few KB, at least 100x100 pixels, and not one flat colour."""
    from matplotlib.image import imread

    assert path.is_file() and path.stat().st_size > min_bytes, path
    img = imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100 and img[..., :3].std() > 0.05, path


def build_workspace(root: Path, parts=("trifeatures", "multibench", "mmimdb", "sweep")) -> ResultsStore:
    store = ResultsStore(Path(root) / "results.sqlite")
    builders = {"trifeatures": build_trifeatures, "multibench": build_multibench, "mmimdb": build_mmimdb,
                "sweep": build_sweep}
    for p in parts:
        builders[p](store)
    return store
