"""Figures of sweeps and tables (heat map, sensitivity, per-seed strips) and how every figure is drawn and
written: a `matplotlib.figure.Figure` on the Agg canvas (no pyplot, no GUI, no global state), saved atomically."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from infmask.data.durable import atomic_path

from .selection import metric_scale
from .tables import TableReport


def _wrap(title: str, fig_width_in: float, fontsize: float = 10) -> str:
    import textwrap

    return textwrap.fill(title, max(20, int(fig_width_in * 72 / (0.6 * fontsize))))


def new_figure(w: float, h: float):
    """A figure on its own Agg canvas: pyplot's global figure list and GUI backend stay out of reports."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: Path) -> Path:
    """Every figure of the reports is written here (the tests read figures back by replacing this function)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")   # atomic_path fsyncs it before it replaces the old figure
    return path


def _pending_cells(trials: pd.DataFrame | None, axes: dict | None, g: pd.DataFrame) -> dict:
    """{(mask_ratio, temperature): why it has no value}: `running`, `failed`, `preempted` for trials without a
    validation value, `not run` for grid points no trial has reached yet."""
    out = {}
    for mr in (axes or {}).get("mask_ratio", []):
        for t in (axes or {}).get("temperature", []):
            out[(mr, t)] = "not run"
    if trials is not None and not trials.empty:
        order = ("running", "preempted", "failed")
        for (mr, t), grp in trials.dropna(subset=["mask_ratio", "temperature"]).groupby(["mask_ratio", "temperature"]):
            statuses = set(grp.loc[grp["val"].isna(), "status"])
            why = next((s for s in order if s in statuses), None)
            out[(mr, t)] = why or out.get((mr, t), "not run")
    for r in g.itertuples():
        out.pop((r.mask_ratio, r.temperature), None)
    return out


def plot_sweep_heatmap(grid: pd.DataFrame, goal: str, metric: str, title: str, path: Path,
                       trials: pd.DataFrame | None = None, axes: dict | None = None) -> Path:
    """Validation mean over seeds on a mask_ratio × temperature grid (best over any other params, which the title
    then says), best cell boxed. With the sweep's `trials` and grid `axes`, cells without a value are drawn hatched
    and say why: not run, running, failed or preempted."""
    scale = metric_scale(metric)
    g = grid.dropna(subset=["mask_ratio", "temperature", "val_mean"])
    if not g.empty and g["other"].nunique() > 1:
        title = f"{title}; each cell the best over: {', '.join(sorted(set(g['other']) - {'{}'}))}"
    if not g.empty:  # one value per (mr, T): the best over other params
        sign = -1 if goal == "min" else 1
        g = g.assign(_k=sign * g["val_mean"]).sort_values("_k", ascending=False).drop_duplicates(
            ["mask_ratio", "temperature"])
    pending = _pending_cells(trials, axes, g)
    mrs = sorted(set(g["mask_ratio"]) | {k[0] for k in pending}) if not g.empty or pending else []
    temps = sorted(set(g["temperature"]) | {k[1] for k in pending}) if not g.empty or pending else []
    fig = new_figure(1.6 + 1.25 * max(len(temps), 2), 1.4 + 0.8 * max(len(mrs), 2))
    ax = fig.add_subplot()
    if g.empty and not pending:
        ax.text(0.5, 0.5, "no finished trials on a\nmask ratio × temperature grid", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_title(_wrap(title, fig.get_figwidth(), 9), fontsize=9)
        return save_figure(fig, path)
    from matplotlib.patches import Rectangle

    z = np.full((len(mrs), len(temps)), np.nan)
    lab = [["" for _ in temps] for _ in mrs]
    for r in g.itertuples():
        i, j = mrs.index(r.mask_ratio), temps.index(r.temperature)
        z[i, j] = r.val_mean * scale
        sd = "" if r.val_std is None or pd.isna(r.val_std) else f"\n±{r.val_std * scale:.1f}"
        lab[i][j] = f"{r.val_mean * scale:.1f}{sd}\nn={r.n}"
    cmap = "viridis_r" if goal == "min" else "viridis"
    im = ax.imshow(z, cmap=cmap, aspect="auto", origin="lower")
    lo, hi = (np.nanmin(z), np.nanmax(z)) if not g.empty else (0.0, 0.0)
    for i in range(len(mrs)):
        for j in range(len(temps)):
            if lab[i][j]:
                frac = 0.5 if hi == lo else (z[i, j] - lo) / (hi - lo)
                dark = frac > 0.6 if goal == "min" else frac < 0.6
                ax.text(j, i, lab[i][j], ha="center", va="center", fontsize=8, color="white" if dark else "black")
    for (mr, t), why in pending.items():
        i, j = mrs.index(mr), temps.index(t)
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="0.93", edgecolor="0.6", hatch="//",
                               linewidth=0.5))
        ax.text(j, i, why, ha="center", va="center", fontsize=8, color="0.25", style="italic")
    if not g.empty:
        bi, bj = np.unravel_index(np.nanargmin(z) if goal == "min" else np.nanargmax(z), z.shape)
        ax.add_patch(Rectangle((bj - 0.5, bi - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2.5))
    ax.set_xlim(-0.5, len(temps) - 0.5)
    ax.set_ylim(-0.5, len(mrs) - 0.5)
    ax.set_xticks(range(len(temps)), [f"{t:g}" for t in temps])
    ax.set_yticks(range(len(mrs)), [f"{m:g}" for m in mrs])
    ax.set_xlabel("temperature")
    ax.set_ylabel("mask ratio")
    ax.set_title(_wrap(title, fig.get_figwidth() * 0.8, 9), fontsize=9)
    fig.colorbar(im, ax=ax, label=f"val {metric} ×{scale:g} (mean over seeds)")
    return save_figure(fig, path)


def plot_sensitivity(grid: pd.DataFrame, goal: str, metric: str, title: str, path: Path) -> Path:
    """Validation metric along each axis: one line per value of the other axis, error bars = sample std."""
    scale = metric_scale(metric)
    fig = new_figure(10, 3.8)
    axes = fig.subplots(1, 2)
    g = grid.dropna(subset=["mask_ratio", "temperature", "val_mean"])
    for ax, (x, line) in zip(axes, (("mask_ratio", "temperature"), ("temperature", "mask_ratio"))):
        if g.empty:
            ax.text(0.5, 0.5, "no finished trials", ha="center", va="center", transform=ax.transAxes)
            continue
        for v, sub in g.groupby(line):
            sign = -1 if goal == "min" else 1
            sub = sub.assign(_k=sign * sub["val_mean"]).sort_values("_k", ascending=False).drop_duplicates(x)
            sub = sub.sort_values(x)
            err = sub["val_std"].astype(float).fillna(0.0) * scale
            ax.errorbar(sub[x], sub["val_mean"] * scale, yerr=err, marker="o", capsize=3, label=f"{line}={v:g}")
        if x == "temperature":
            ax.set_xscale("log")
            ticks = sorted(g[x].unique())
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            ax.minorticks_off()
        ax.set_xlabel(x.replace("_", " "))
        ax.set_ylabel(f"val {metric} ×{scale:g}")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def plot_seed_strips(report: TableReport, path: Path) -> Path:
    """Per cell: our per-seed test values (dots), their mean (bar), the published mean ± std (red diamond and
    bar) and, where a column has one, the chance level (dashed; 50 % balanced accuracy for synergy)."""
    cols = report.spec.columns
    rows = [r for r in report.rows if r.ours or any(r.cells[c.key].paper_mean is not None for c in cols)]
    fig = new_figure(3.2 * len(cols) + 1, 0.9 + 0.42 * max(len(rows), 3))
    axes = np.atleast_1d(fig.subplots(1, len(cols), sharey=True))
    rng = np.random.default_rng(0)
    for ax, c in zip(axes, cols):
        for i, r in enumerate(rows):
            cell = r.cells[c.key]
            if cell.values:
                y = i + rng.uniform(-0.15, 0.15, len(cell.values))
                ax.scatter(cell.values, y, s=18, alpha=0.8, color="C0", zorder=3)
            if r.ours and cell.mean is not None:
                ax.plot([cell.mean, cell.mean], [i - 0.3, i + 0.3], color="C0", linewidth=2)
            if cell.paper_mean is not None:
                ax.errorbar([cell.paper_mean], [i], xerr=[cell.paper_std] if cell.paper_std else None, fmt="D",
                            markersize=5, color="C3", capsize=3, zorder=4)
        if c.chance is not None:
            ax.axvline(c.chance, color="0.45", linestyle="--", linewidth=1, zorder=1)
            ax.annotate(f"chance {c.chance:g}", (c.chance, 1.0), xycoords=("data", "axes fraction"),
                        xytext=(2, -2), textcoords="offset points", fontsize=7, color="0.35", va="top")
        ax.set_title(f"{c.label} {c.arrow}", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(rows)), [r.label + (f" [{r.preset}]" if r.ours else "") for r in rows], fontsize=8)
    axes[0].invert_yaxis()
    from matplotlib.lines import Line2D
    handles = [Line2D([], [], marker="o", ls="", color="C0", label="ours, per seed"),
               Line2D([], [], color="C0", lw=2, label="ours, mean"),
               Line2D([], [], marker="D", ls="-", color="C3", label="paper, mean ± std")]
    if any(c.chance is not None for c in cols):
        handles.append(Line2D([], [], ls="--", color="0.45", label="chance"))
    axes[-1].legend(handles=handles, fontsize=7, loc="best")
    fig.suptitle(report.spec.title, fontsize=10)
    return save_figure(fig, path)


def safe_name(text: str) -> str:
    """A file-name-safe spelling of an id (sweep ids, benchmark names)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "unnamed"
