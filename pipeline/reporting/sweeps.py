"""Sweep results: the trials of each sweep with their runs' validation and test values, the grid of
(mask ratio, temperature) points over seeds, and the best point chosen on validation."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable

import pandas as pd

from .load import _run_facts, load_results, open_store
from .selection import STD_NOTE, format_mean_std, metric_goal, metric_scale, per_run_values, seed_stats


_SEED_KEYS = ("seed",)
_FIXED_KEYS = ("benchmark", "method", "preset")


def _norm_key(k: str) -> str:
    return k.lstrip("-")


def _param(params: dict, suffix: str):
    for k, v in params.items():
        if _norm_key(k).split(".")[-1] == suffix:
            return v
    return None


def load_sweeps(source=None) -> pd.DataFrame:
    """One row per sweep, with its config (config_json: fixed parameters and grid axes, see sweep_pools)."""
    store = open_store(source)
    cols = ["sweep_id", "name", "file", "benchmark", "method", "metric_name", "metric_goal", "status", "n_trials",
            "config_json"]
    if store is None:
        return pd.DataFrame(columns=cols)
    rows = store.sweeps_with_trial_counts()
    return pd.DataFrame([{c: r[c] for c in cols} for r in rows], columns=cols)


def sweep_metric(metric_name: str | None) -> str:
    """'probe/val/acc1' -> 'acc1' (the store's metric name)."""
    return (metric_name or "acc1").split("/")[-1]


def sweep_goal(goal: str | None, metric: str) -> str:
    """W&B's 'maximize'/'minimize' as 'max'/'min'; the metric's usual direction when the sweep has none."""
    if goal:
        return "min" if goal.lower().startswith("min") else "max"
    return metric_goal(metric)


def load_sweep_trials(source=None, sweep_ids: Iterable[str] | None = None) -> pd.DataFrame:
    """One row per trial: its sweep, params, run, seed, mask ratio, temperature and the run's final probe
    validation and test value of the sweep metric (task 'all'). The validation value falls back to the value the
    trial reported when the store has no probe row for its run."""
    cols = ["sweep_id", "sweep_name", "benchmark", "method", "metric", "goal", "trial_index", "status", "run_id",
            "seed", "mask_ratio", "temperature", "other", "val", "test"]
    store = open_store(source)
    if store is None:
        return pd.DataFrame(columns=cols)
    trials = store.trials_with_sweeps(list(sweep_ids) if sweep_ids is not None else None)
    if not trials:
        return pd.DataFrame(columns=cols)
    results = load_results(store)
    by_run = {rid: grp for rid, grp in results.groupby("run_id")} if not results.empty else {}
    runs = {r["run_id"]: r for r in store.runs()}
    out = []
    for t in trials:
        params = {_norm_key(k): v for k, v in json.loads(t["params_json"] or "{}").items()}
        metric = sweep_metric(t["metric_name"])
        run = runs.get(t["run_id"]) or {}
        facts = _run_facts(run.get("config_json", "")) if run else {}
        rows = by_run.get(t["run_id"])
        val = test = None
        if rows is not None:
            v = per_run_values(rows, "val", metric, "all")
            val = float(v.iloc[0]) if len(v) else None
            v = per_run_values(rows, "test", metric, "all")
            test = float(v.iloc[0]) if len(v) else None
        if val is None and t["metric_value"] is not None and t["status"] == "finished":
            val = float(t["metric_value"])
        other = {k: v for k, v in params.items()
                 if k not in _SEED_KEYS + _FIXED_KEYS and k.split(".")[-1] not in ("mask_ratio", "temperature")}
        seed = params.get("seed", run.get("seed"))
        out.append({
            "sweep_id": t["sweep_id"], "sweep_name": t["sweep_name"],
            "benchmark": t["s_benchmark"] or params.get("benchmark") or run.get("benchmark"),
            "method": t["s_method"] or params.get("method") or run.get("method"),
            "metric": metric, "goal": sweep_goal(t["metric_goal"], metric), "trial_index": t["trial_index"],
            "status": t["status"], "run_id": t["run_id"], "seed": seed,
            "mask_ratio": _num(_first(facts.get("mask_ratio"), _param(params, "mask_ratio"))),
            "temperature": _num(_first(facts.get("temperature"), _param(params, "temperature"))),
            "other": json.dumps(other, sort_keys=True, default=str), "val": val, "test": test})
    return pd.DataFrame(out, columns=cols)


def _first(*xs):
    """The run's resolved config wins over the trial's params (they agree unless a key was spelled differently)."""
    return next((x for x in xs if x is not None), None)


def _num(x):
    try:
        return None if x is None else round(float(x), 10)
    except (TypeError, ValueError):
        return None


def sweep_grid(trials: pd.DataFrame) -> pd.DataFrame:
    """Per (mask_ratio, temperature, other params): seeds, validation and test mean ± sample std (raw values)."""
    cols = ["mask_ratio", "temperature", "other", "n", "seeds", "val_mean", "val_std", "test_mean", "test_std",
            "n_test", "run_ids"]
    done = trials[trials["val"].notna()] if not trials.empty else trials
    if done.empty:
        return pd.DataFrame(columns=cols)
    out = []
    for (mr, t, other), grp in done.groupby(["mask_ratio", "temperature", "other"], dropna=False):
        v, te = seed_stats(grp["val"].tolist()), seed_stats(grp["test"].dropna().tolist())
        out.append({"mask_ratio": mr, "temperature": t, "other": other, "n": v.n,
                    "seeds": " ".join(str(s) for s in sorted(grp["seed"].dropna().astype(int))),
                    "val_mean": v.mean, "val_std": v.std, "test_mean": te.mean, "test_std": te.std, "n_test": te.n,
                    "run_ids": [r for r in grp["run_id"] if r]})
    return pd.DataFrame(out, columns=cols)


def best_of_grid(grid: pd.DataFrame, goal: str) -> pd.Series | None:
    """The grid point with the best validation mean (ties: more seeds). Test columns are not read."""
    if grid.empty:
        return None
    sign = -1.0 if goal == "min" else 1.0
    order = sorted(range(len(grid)), key=lambda i: (sign * grid["val_mean"].iloc[i], grid["n"].iloc[i]), reverse=True)
    return grid.iloc[order[0]]


@dataclass
class SweepReport:
    title: str
    benchmark: str | None
    method: str | None
    metric: str
    goal: str
    trials: pd.DataFrame
    grid: pd.DataFrame
    best: pd.Series | None
    best_tasks: pd.DataFrame = field(default_factory=pd.DataFrame)   # per-task test mean ± std at the best point

    @property
    def scale(self) -> float:
        return metric_scale(self.metric)

    def to_markdown(self) -> str:
        s, d = self.scale, 2 if self.metric == "mse" else 1
        n_done = int(self.trials["val"].notna().sum())
        lines = [f"### Sweep {self.title}: {self.benchmark} / {self.method}", "",
                 f"{len(self.trials)} trials, {n_done} with a validation value; metric `{self.metric}` "
                 f"({'lower' if self.goal == 'min' else 'higher'} is better), shown ×{s:g}; {STD_NOTE}."]
        if self.best is not None:
            b = self.best
            lines += ["", f"**Best by validation: mask_ratio = {b['mask_ratio']}, temperature = {b['temperature']}**"
                      + (f" (other: {b['other']})" if b["other"] not in ("{}", None) else "")
                      + f" — val {format_mean_std(_sc(b['val_mean'], s), _sc(b['val_std'], s), d, ' ± ')}"
                      f" (n={b['n']}); test {format_mean_std(_sc(b['test_mean'], s), _sc(b['test_std'], s), d, ' ± ') or 'n/a'}"
                      f" (n={b['n_test']})."]
        if not self.best_tasks.empty:
            lines += ["", "Test at the best config, per task: " + "; ".join(
                f"{r.task} {format_mean_std(r.mean, r.std, d, ' ± ')} (n={r.n})" for r in self.best_tasks.itertuples())]
        lines += ["", "| mask_ratio | temperature | other | seeds | val ours | test ours |", "|---:|---:|---|---:|---:|---:|"]
        for r in self.grid.sort_values(["mask_ratio", "temperature"]).itertuples():
            mark = " ◀ best" if self.best is not None and (r.mask_ratio, r.temperature, r.other) == (
                self.best["mask_ratio"], self.best["temperature"], self.best["other"]) else ""
            lines.append(f"| {r.mask_ratio} | {r.temperature} | {'' if r.other == '{}' else r.other} | {r.n} | "
                         f"{format_mean_std(_sc(r.val_mean, s), _sc(r.val_std, s), d, ' ± ')}{mark} | "
                         f"{format_mean_std(_sc(r.test_mean, s), _sc(r.test_std, s), d, ' ± ')} |")
        return "\n".join(lines + [""])

    def to_csv(self) -> str:
        g = self.grid.drop(columns=["run_ids"]).copy()
        g.insert(0, "sweep", self.title)
        g["metric"], g["goal"], g["std_kind"] = self.metric, self.goal, "sample (ddof=1)"
        g["best"] = False
        if self.best is not None:
            g["best"] = (g["mask_ratio"] == self.best["mask_ratio"]) & (g["temperature"] == self.best["temperature"]) \
                & (g["other"] == self.best["other"])
        return g.to_csv(index=False)


def _sc(x, s):
    return None if x is None or pd.isna(x) else float(x) * s


def sweep_report(trials: pd.DataFrame, title: str, results: pd.DataFrame | None = None) -> SweepReport:
    """Best (mask_ratio, temperature) by validation mean over seeds; test mean ± std at that point."""
    metric = trials["metric"].mode().iloc[0] if not trials.empty else "acc1"
    goal = trials["goal"].mode().iloc[0] if not trials.empty else metric_goal(metric)
    grid = sweep_grid(trials)
    best = best_of_grid(grid, goal)
    tasks = pd.DataFrame()
    if best is not None and results is not None and not results.empty:
        rows = results[results["run_id"].isin(best["run_ids"]) & (results["split"] == "test")
                       & (results["metric"] == metric) & (results["task"] != "all")]
        if not rows.empty:
            tasks = pd.DataFrame([{"task": t, **seed_stats((g["value"] * metric_scale(metric)).tolist()).__dict__}
                                  for t, g in rows.groupby("task")])
    one = lambda col: trials[col].mode().iloc[0] if not trials.empty and trials[col].notna().any() else None
    return SweepReport(title, one("benchmark"), one("method"), metric, goal, trials, grid, best, tasks)
