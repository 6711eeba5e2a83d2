"""Metric scale and direction, seed statistics and the validation-only choice of a config: the rules every
table, sweep report and figure shares."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import pandas as pd

STD_NOTE = "mean ± sample std (ddof=1) over seeds"

# Display scale and direction of each probe metric (store values are raw: accuracies in [0,1], MSE unscaled).
METRIC_SCALE = {"mse": 1e4, "r2": 1.0, "pearson_r": 1.0, "C": 1.0, "loss": 1.0}
METRIC_GOAL = {"mse": "min", "loss": "min"}


def metric_scale(metric: str) -> float:
    return METRIC_SCALE.get(metric, 100.0)


def metric_goal(metric: str) -> str:
    return METRIC_GOAL.get(metric, "max")


def _better(a: float, b: float, goal: str) -> bool:
    return a < b if goal == "min" else a > b


@dataclass(frozen=True)
class SeedStats:
    mean: float | None
    std: float | None       # sample std, ddof=1; None with fewer than 2 seeds
    n: int


def seed_stats(values: Iterable[float]) -> SeedStats:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if v.size == 0:
        return SeedStats(None, None, 0)
    return SeedStats(float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else None, int(v.size))


def _pick_task(rows: pd.DataFrame, task: str | None) -> str | None:
    """The task whose rows to read: the named one if present, else the mean over tasks ('all'), else the only one."""
    tasks = set(rows["task"])
    if task is not None and task in tasks:
        return task
    if "all" in tasks:
        return "all"
    return next(iter(tasks)) if len(tasks) == 1 else None


def per_run_values(rows: pd.DataFrame, split: str, metric: str, task: str | None) -> pd.Series:
    """One value per run (indexed by run_id) for (split, metric, task)."""
    sel = rows[(rows["split"] == split) & (rows["metric"] == metric)]
    t = _pick_task(sel, task) if not sel.empty else None
    if t is None:
        return pd.Series(dtype=float)
    sel = sel[(sel["task"] == t) & sel["value"].notna()]
    return sel.groupby("run_id")["value"].first()


@dataclass
class Selection:
    config_hash: str | None
    monitor: str
    goal: str
    val_score: float | None              # mean over seeds of the raw validation metric of the chosen config
    candidates: pd.DataFrame             # config_hash, val_mean, n_val: what was compared


def monitored_metric(rows: pd.DataFrame, default: str = "acc1", default_goal: str = "max") -> tuple[str, str]:
    """The probe metric the runs monitored (their config's probe.monitor/mode), most common first."""
    mon = rows["monitor"].dropna() if "monitor" in rows else pd.Series(dtype=object)
    if mon.empty:
        return default, default_goal
    metric = mon.mode().iloc[0]
    modes = rows.loc[rows["monitor"] == metric, "monitor_mode"].dropna()
    return metric, (modes.mode().iloc[0] if not modes.empty else metric_goal(metric))


def select_config(rows: pd.DataFrame, monitor: str | None = None, goal: str | None = None,
                  task: str = "all", require: Callable[[str], bool] | None = None) -> Selection:
    """Best config_hash among `rows` by the VALIDATION split only: the mean over its seeds of the final probe
    `monitor` metric (task 'all' = the mean over tasks, the key the runs monitored). `require(config_hash)`
    drops configs that cannot fill the cell (e.g. no test value yet); it never looks at test values.
    Only configs with the full seed set compete (the most seeds any candidate has): a config with fewer seeds, e.g.
    a one-seed exploratory trial, never beats one with the full set, whatever its validation value. Ties go to more
    seeds, then to the config hash (deterministic)."""
    if monitor is None or goal is None:
        m, g = monitored_metric(rows)
        monitor, goal = monitor or m, goal or g
    val_rows = rows[rows["split"] == "val"]   # the only split a choice may read
    cands = []
    for h, grp in val_rows.groupby("config_hash"):
        if require is not None and not require(h):
            continue
        vals = per_run_values(grp, "val", monitor, task)
        st = seed_stats(vals.tolist())
        cands.append({"config_hash": h, "val_mean": st.mean, "n_val": st.n})
    for h in sorted(set(rows["config_hash"]) - set(val_rows["config_hash"])):  # probed without val rows
        if require is None or require(h):
            cands.append({"config_hash": h, "val_mean": None, "n_val": 0})
    table = pd.DataFrame(cands, columns=["config_hash", "val_mean", "n_val"])
    if table.empty:
        return Selection(None, monitor, goal, None, table)
    sign = -1.0 if goal == "min" else 1.0
    full = max(c["n_val"] for c in cands)

    def rank(c: dict):
        has = c["val_mean"] is not None and not pd.isna(c["val_mean"])
        return (has, c["n_val"] >= full, sign * c["val_mean"] if has else -math.inf, c["n_val"], c["config_hash"])

    best = max(cands, key=rank)
    val = None if best["val_mean"] is None or pd.isna(best["val_mean"]) else float(best["val_mean"])
    return Selection(str(best["config_hash"]), monitor, goal, val, table)


def format_mean_std(mean, std, decimals: int, pm: str) -> str:
    """`mean` with `std` after the separator `pm`; '' without a mean, the mean alone without a std."""
    if mean is None or pd.isna(mean):
        return ""
    if std is None or pd.isna(std):
        return f"{mean:.{decimals}f}"
    return f"{mean:.{decimals}f}{pm}{std:.{decimals}f}"
