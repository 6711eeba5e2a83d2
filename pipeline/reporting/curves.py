"""Training curves: per-epoch loss, validation probe and throughput per group of runs (a config over its
seeds), labelled in hyper-parameters."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from .config_labels import distinguishing_labels
from . import figures
from .selection import metric_goal, metric_scale, monitored_metric


CURVE_PANELS = (("train", "loss", "training loss"), ("val", None, "per-epoch val probe"),
                ("train", "perf/samples_per_s", "throughput (samples/s)"))


def curve_labels(curves: pd.DataFrame) -> dict:
    """{(method, config_hash): legend label} in hyper-parameters (method, ρ, τ, biased data, and whatever else
    sets the groups apart), from each group's resolved config."""
    if curves.empty:
        return {}
    configs = {}
    for key, grp in curves.groupby(["method", "config_hash"]):
        cfg = grp["config_json"].dropna().iloc[0] if "config_json" in grp and grp["config_json"].notna().any() \
            else {"method": key[0], "model": {"mask_ratio": grp["mask_ratio"].iloc[0],
                                              "temperature": grp["temperature"].iloc[0]},
                  "data": {"biased": bool(grp["biased"].iloc[0])}}
        configs[key] = cfg
    show_biased = "biased" in curves and bool(curves["biased"].fillna(False).astype(bool).any())
    return distinguishing_labels(configs, biased=show_biased)


def curve_groups(curves: pd.DataFrame) -> pd.DataFrame:
    """One line per group (benchmark, method, config_hash): its label, seeds, preset, last epoch."""
    if curves.empty:
        return pd.DataFrame(columns=["benchmark", "method", "config_hash", "config", "preset", "seeds", "epochs"])
    g = curves.groupby(["benchmark", "method", "config_hash"])
    out = pd.DataFrame({"preset": g["preset"].first(), "seeds": g["seed"].nunique(),
                        "epochs": g["step"].max() + 1}).reset_index()
    labels = curve_labels(curves)
    out.insert(3, "config", [labels.get((m, h), "") for m, h in zip(out["method"], out["config_hash"])])
    return out


def _final_val(grp: pd.DataFrame, monitor: str) -> float:
    sel = grp[(grp["split"] == "val") & (grp["metric"] == monitor) & (grp["task"] == "all") & grp["value"].notna()]
    return float(sel.loc[sel["step"] == sel["step"].max(), "value"].mean()) if not sel.empty else -math.inf


def _draw_groups(ax, groups, labels: dict, handles: dict, pick, scale: float) -> bool:
    """Thin line per run (seed), thick mean per group, in the group's colour (and line style past 10 groups);
    `pick(grp)` selects the rows of one panel. Fills `handles` for one figure legend; True if anything was drawn."""
    styles = ("-", "--", ":", "-.")
    drew = False
    for k, ((method, h), grp) in enumerate(groups):
        sel = pick(grp)
        if sel.empty:
            continue
        color, style = f"C{k % 10}", styles[(k // 10) % len(styles)]
        for _, run in sel.groupby("run_id"):
            run = run.sort_values("step")
            ax.plot(run["step"] + 1, run["value"] * scale, color=color, alpha=0.3, linewidth=0.8, linestyle=style)
        mean = sel.groupby("step")["value"].mean() * scale
        line, = ax.plot(mean.index + 1, mean.values, color=color, linewidth=2, marker="o", markersize=3,
                        linestyle=style)
        handles.setdefault((method, h), (line, f"{labels.get((method, h), method)} (n={grp['run_id'].nunique()})"))
        drew = True
    return drew


def _group_legend(fig, handles: dict) -> None:
    if handles:  # one legend for the figure: the groups are the same in every panel
        fig.legend([h for h, _ in handles.values()], [t for _, t in handles.values()], fontsize=7,
                   loc="outside lower center", ncols=min(3, len(handles)))


def plot_training_curves(curves: pd.DataFrame, title: str, path: Path, max_groups: int | None = None) -> Path:
    """Training loss, per-epoch validation probe and throughput against epoch: thin lines per run (seed), thick
    mean per group (config without seed), every group labelled in hyper-parameters; epochs counted from 1, as on
    the console (the store keeps them from 0). With `max_groups`, the groups
    with the best last validation value are drawn and the title says how many of how many."""
    monitor = monitored_metric(curves)[0] if not curves.empty else "acc1"
    groups = list(curves.groupby(["method", "config_hash"])) if not curves.empty else []
    n_all = len(groups)
    if max_groups is not None and n_all > max_groups:
        sign = -1.0 if metric_goal(monitor) == "min" else 1.0
        groups = sorted(groups, key=lambda kv: -sign * _final_val(kv[1], monitor))[:max_groups]
        title = f"{title} ({max_groups} of {n_all} groups: the best by last validation {monitor})"
    labels = curve_labels(curves)
    fig = figures.new_figure(13, 3.8 + 0.16 * max(0, len(groups) - 8))
    axes = fig.subplots(1, len(CURVE_PANELS))
    from matplotlib.ticker import MaxNLocator

    handles = {}
    for ax, (split, metric, label) in zip(axes, CURVE_PANELS):
        metric = metric or monitor
        scale = metric_scale(metric) if split == "val" else 1.0
        drew = _draw_groups(ax, groups, labels, handles, scale=scale, pick=lambda g, split=split, metric=metric: g[
            (g["split"] == split) & (g["metric"] == metric) & (g["task"] == "all") & g["value"].notna()])
        if not drew:
            ax.text(0.5, 0.5, f"no {split} {metric} rows", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("epoch (from 1, as the progress lines count)")
        ax.set_title(f"{label}" + (f": {metric} ×{scale:g}" if split == "val" else ""), fontsize=9)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _group_legend(fig, handles)
    fig.suptitle(title, fontsize=10)
    return figures.save_figure(fig, path)


def task_panels(curves: pd.DataFrame) -> list[tuple[str, str]]:
    """(task, metric) panels of the per-epoch validation probe: each task's primary metric, and for binary tasks
    (Trifeatures' synergy, ~10 % positives) also the AUROC, which shows a weak signal that balanced accuracy at
    the probe's 0.5 threshold does not."""
    val = curves[(curves["split"] == "val") & (curves["task"] != "all") & curves["value"].notna()]
    if val.empty:
        return []
    monitor = monitored_metric(curves)[0]
    panels = []
    for task in dict.fromkeys(val["task"]):
        metrics = set(val.loc[val["task"] == task, "metric"])
        if monitor in metrics:
            panels.append((task, monitor))
        if "roc_auc" in metrics and task == "synergy":
            panels.append((task, "roc_auc"))
    return panels


def plot_task_curves(curves: pd.DataFrame, title: str, path: Path) -> Path:
    """The per-epoch validation probe task by task (one panel per task, plus the synergy AUROC): thin lines per
    run (seed), thick mean per group, labelled in hyper-parameters; epochs counted from 1."""
    panels = task_panels(curves) if not curves.empty else []
    groups = list(curves.groupby(["method", "config_hash"])) if panels else []
    labels = curve_labels(curves)
    fig = figures.new_figure(3.2 * max(1, len(panels)), 3.6 + 0.16 * max(0, len(groups) - 8))
    axes = np.atleast_1d(fig.subplots(1, max(1, len(panels))))
    handles = {}
    for ax, (task, metric) in zip(axes, panels):
        scale = metric_scale(metric)
        _draw_groups(ax, groups, labels, handles, scale=scale, pick=lambda g, task=task, metric=metric: g[
            (g["split"] == "val") & (g["task"] == task) & (g["metric"] == metric) & g["value"].notna()])
        if metric in ("acc1", "roc_auc") and task == "synergy":
            ax.axhline(50, color="grey", linewidth=0.8, linestyle=":")
        ax.set_title(f"{task}: {metric} ×{scale:g}", fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    if not panels:
        axes[0].text(0.5, 0.5, "no per-task validation rows", ha="center", va="center", transform=axes[0].transAxes)
    _group_legend(fig, handles)
    fig.suptitle(title, fontsize=10)
    return figures.save_figure(fig, path)


def throughput_summary(curves: pd.DataFrame) -> pd.DataFrame:
    """Mean of the perf/* keys over epochs and seeds, per group."""
    cols = ["benchmark", "method", "config_hash", "preset", "seeds", "perf/samples_per_s", "perf/step_time_s",
            "perf/data_wait_s"]
    perf = curves[curves["metric"].astype(str).str.startswith("perf/")] if not curves.empty else curves
    if perf.empty:
        return pd.DataFrame(columns=cols)
    out = perf.pivot_table(index=["benchmark", "method", "config_hash"], columns="metric", values="value",
                           aggfunc="mean").reset_index()
    meta = curve_groups(curves)
    out = meta.merge(out, on=["benchmark", "method", "config_hash"], how="right")
    return out[[c for c in cols if c in out.columns]]
