"""Loading, config selection, aggregation, rendering and plotting of results: the one implementation behind
`infmask report` and the notebooks in notebooks/.

Conventions every function here keeps:
- only the results store is read (W&B is a dashboard, not a source);
- a reported number is the mean ± *sample* std (ddof=1) over seeds of a **test** metric;
- where several configs (config_hash) compete for a cell, the winner is chosen on the **validation** split only
  (mean over seeds of the monitored probe metric); test values are read after the choice, never before;
- nothing here raises on an empty store: functions return empty frames / reports that say they are empty, and
  `inspect_workspace` never creates a file or folder (notebooks open missing workspaces too);
- figures are drawn on `matplotlib.figure.Figure` with the Agg canvas (no pyplot, no GUI, no global state) and
  written atomically.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd

from .config_labels import distinguishing_labels, short_label
from .run_selection import RunFilter
from .sweep_pools import SweepPool, fixed_text, sweep_pools  # noqa: F401  (notebooks use them through this module)
from .store import ResultsStore
from .workspace import atomic_path, resolve_root

PAPER_CSV = Path(__file__).resolve().parent / "paper_tables.csv"
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


# =============================================================================================== workspace

@dataclass
class WorkspaceState:
    """What a workspace holds, read without creating anything; `message(need)` is what a notebook prints first."""
    root: Path
    exists: bool = False
    has_store: bool = False
    n_runs: int = 0
    n_results: int = 0          # runs with final probe test metrics
    n_sweeps: int = 0
    n_trials: int = 0
    n_curves: int = 0           # runs with per-epoch pretraining rows

    @property
    def db_path(self) -> Path:
        return self.root / "results.sqlite"

    @property
    def has_results(self) -> bool:
        return self.n_results > 0

    @property
    def has_sweeps(self) -> bool:
        return self.n_trials > 0

    @property
    def has_curves(self) -> bool:
        return self.n_curves > 0

    def ok(self, need: str = "results") -> bool:
        return {"results": self.has_results, "sweeps": self.has_sweeps, "curves": self.has_curves}[need]

    def message(self, need: str = "results") -> str:
        hint = f"Run e.g. `infmask run trifeatures --preset smoke --root {self.root}` first, or point INFMASK_ROOT " \
               f"(or the `root` parameter) at a workspace with results."
        if not self.exists:
            return f"The workspace {self.root} does not exist, so it is empty: there is nothing to show. {hint}"
        if not self.has_store:
            return f"The workspace {self.root} is empty: it has no results store ({self.db_path.name}) yet. {hint}"
        what = {"results": "final probe results", "sweeps": "sweep trials", "curves": "training curves"}[need]
        if not self.ok(need):
            return (f"The workspace {self.root} is empty for this notebook: its results store holds no {what} yet "
                    f"({self.n_runs} runs, {self.n_results} probed, {self.n_sweeps} sweeps). {hint}")
        return (f"Workspace {self.root}: {self.n_runs} runs, {self.n_results} with final probe results, "
                f"{self.n_curves} with training curves, {self.n_sweeps} sweeps ({self.n_trials} trials).")


def inspect_workspace(root: str | os.PathLike | None = None) -> WorkspaceState:
    state = WorkspaceState(resolve_root(root))
    state.exists = state.root.is_dir()
    state.has_store = state.db_path.is_file()
    if not state.has_store:
        return state
    store = ResultsStore(state.db_path)

    def count(sql: str) -> int:
        return int(store.query(sql)[0][0])

    state.n_runs = count("SELECT COUNT(*) FROM runs")
    state.n_results = count("SELECT COUNT(DISTINCT m.run_id) FROM metrics m JOIN runs r ON r.run_id = m.run_id "
                            "WHERE m.stage='probe' AND m.split='test' AND m.step=-1 AND r.status != 'failed'")
    state.n_curves = count("SELECT COUNT(DISTINCT run_id) FROM metrics WHERE stage='pretrain' AND step >= 0")
    state.n_sweeps = count("SELECT COUNT(*) FROM sweeps")
    state.n_trials = count("SELECT COUNT(*) FROM sweep_trials")
    return state


def open_store(source) -> ResultsStore | None:
    """A ResultsStore from a store, a workspace root or None ($INFMASK_ROOT); None when there is no database
    (opening one would create it)."""
    if isinstance(source, ResultsStore):
        return source
    path = resolve_root(source) / "results.sqlite"
    return ResultsStore(path) if path.is_file() else None


def figures_dir(root: str | os.PathLike | None = None) -> Path:
    path = resolve_root(root) / "reports" / "figures"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _run_facts(config_json: str) -> dict:
    """The config fields reports group and label by, from a run's resolved config."""
    try:
        cfg = json.loads(config_json) if config_json else {}
    except (TypeError, ValueError):
        cfg = {}
    data, model, probe = cfg.get("data") or {}, cfg.get("model") or {}, cfg.get("probe") or {}
    return {"biased": bool(data.get("biased", False)), "feature_cache": bool(data.get("feature_cache", False)),
            "mask_ratio": model.get("mask_ratio"), "temperature": model.get("temperature"),
            "monitor": probe.get("monitor"), "monitor_mode": probe.get("mode"),
            "n_modalities": len(model.get("modalities") or []),
            "tags": tuple((cfg.get("tracking") or {}).get("tags") or ())}


_FACTS = ("biased", "feature_cache", "mask_ratio", "temperature", "monitor", "monitor_mode", "n_modalities", "tags")


def _with_facts(frame: pd.DataFrame, keep_config: bool = False) -> pd.DataFrame:
    """The run's grouping facts as columns; `keep_config` keeps its resolved config (config_json) for labels."""
    drop = [] if keep_config else ["config_json"]
    if frame.empty:
        for col in _FACTS:
            frame[col] = pd.Series(dtype=object)
        return frame.drop(columns=drop, errors="ignore")
    facts = {rid: _run_facts(cj) for rid, cj in frame.groupby("run_id")["config_json"].first().items()}
    facts_df = pd.DataFrame.from_dict(facts, orient="index")
    facts_df.index.name = "run_id"
    return frame.drop(columns=drop).merge(facts_df, left_on="run_id", right_index=True, how="left")


def load_results(source=None) -> pd.DataFrame:
    """Final probe metrics, one row per (run, split, task, metric), with the run's grouping facts as columns.
    Failed runs are left out. Empty frame (with the columns) when there is nothing."""
    store = open_store(source)
    if store is None:
        return _with_facts(pd.DataFrame(columns=_RESULT_COLUMNS))
    frame = store.results_frame(stage="probe", final_only=True)
    frame = frame[frame["status"] != "failed"].copy()
    return _with_facts(frame)


_RESULT_COLUMNS = ["run_id", "benchmark", "method", "preset", "seed", "config_hash", "protocol", "status",
                   "config_json", "sweep_id", "stage", "split", "task", "metric", "step", "value"]


def load_curves(source=None, benchmark: str | None = None) -> pd.DataFrame:
    """Per-epoch pretraining rows (training loss, perf/*, lr, per-epoch val probe), step = epoch; with each run's
    resolved config (config_json), from which legends are labelled."""
    store = open_store(source)
    if store is None:
        return _with_facts(pd.DataFrame(columns=_RESULT_COLUMNS), keep_config=True)
    frame = store.results_frame(benchmark=benchmark, stage="pretrain", final_only=False)
    return _with_facts(frame[frame["step"] >= 0].copy(), keep_config=True)


def load_paper(path: Path = PAPER_CSV) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"table": str, "benchmark": str, "model": str, "modalities": str})


# =============================================================================================== aggregation

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


# =============================================================================================== table specs

@dataclass(frozen=True)
class Column:
    key: str
    label: str
    task: str | None            # store task; None = 'all' or the benchmark's only task
    metric: str                 # store metric name (test split)
    paper_benchmark: str        # paper_tables.csv `benchmark`
    paper_metric: str           # paper_tables.csv `metric`
    biased: bool | None = None  # Trifeatures: which runs feed the column
    decimals: int = 1
    average_of: tuple[str, ...] = ()   # derived column: plain mean of these columns' means
    chance: float | None = None        # the score of a guess (balanced accuracy: 100 / classes), drawn in figures

    @property
    def scale(self) -> float:
        return metric_scale(self.metric)

    @property
    def goal(self) -> str:
        return metric_goal(self.metric)

    @property
    def arrow(self) -> str:
        return "↓" if self.goal == "min" else "↑"


@dataclass(frozen=True)
class Variant:
    """One family of rows of a table: the suffix shown after the model name and the benchmark feeding each column."""
    suffix: str
    benchmarks: tuple[tuple[str, str], ...]   # (column key, benchmark config name)

    def benchmark(self, key: str) -> str | None:
        return dict(self.benchmarks).get(key)


@dataclass(frozen=True)
class TableSpec:
    name: str
    paper_table: str
    title: str
    columns: tuple[Column, ...]
    variants: tuple[Variant, ...]
    model_names: tuple[tuple[str, str], ...]
    paper_suffix: Callable[[pd.Series], str] = lambda row: ""
    note: str = ""

    def model_name(self, method: str) -> str:
        return dict(self.model_names).get(method, method)

    @property
    def benchmarks(self) -> list[str]:
        return sorted({b for v in self.variants for _, b in v.benchmarks})


BASE_NAMES = (("infmasking", "InfMasking"), ("comm", "CoMM"), ("cross", "Cross"), ("cross_self", "Cross+Self"),
              ("cmc", "CMC"))
_ACC = "linear_probe_acc_pct"


def _n_mod_suffix(row) -> str:
    return f"({len(str(row['modalities']).split('+'))})"


TABLES: dict[str, TableSpec] = {
    "trifeatures": TableSpec(
        name="trifeatures", paper_table="trifeatures",
        title="Trifeatures: linear-probe balanced accuracy (%)",
        columns=(
            Column("redundancy", "Redundancy (shape)", "share", "acc1", "trifeatures_redundancy_shape", _ACC, False,
                   chance=10.0),
            Column("uniqueness", "Uniqueness (texture)", "unique1", "acc1", "trifeatures_uniqueness_texture", _ACC,
                   False, chance=10.0),
            Column("synergy", "Synergy (colour+texture)", "synergy", "acc1", "trifeatures_synergy_color_texture", _ACC,
                   True, chance=50.0),
        ),
        variants=(Variant("", (("redundancy", "trifeatures"), ("uniqueness", "trifeatures"),
                               ("synergy", "trifeatures"))),),
        model_names=BASE_NAMES,
        note="Redundancy and uniqueness come from unbiased runs (data.biased=False), synergy from biased runs "
             "(data.biased=True); each picks its own config by validation acc1."),
    "multibench": TableSpec(
        name="multibench", paper_table="multibench_2mod",
        title="MultiBench, 2 modalities: linear probe (V&T: MSE ×10⁻⁴; others: balanced accuracy %)",
        columns=(
            Column("vt_mse", "V&T EE MSE", "ee_yaw_next", "mse", "visionandtouch_ee_regression",
                   "linear_probe_mse_x1e-4", decimals=2),
            Column("mimic", "MIMIC", None, "acc1", "mimic", _ACC),
            Column("mosi", "MOSI", None, "acc1", "mosi", _ACC),
            Column("humor", "UR-FUNNY", None, "acc1", "humor", _ACC),
            Column("sarcasm", "MUSTARD", None, "acc1", "sarcasm", _ACC),
            Column("avg", "Classification average", None, "acc1", "classification_average",
                   "linear_probe_acc_pct_avg", decimals=2, average_of=("mimic", "mosi", "humor", "sarcasm")),
        ),
        variants=(Variant("", (("vt_mse", "visionandtouch"), ("mimic", "mimic"), ("mosi", "mosi"),
                               ("humor", "humor"), ("sarcasm", "sarcasm"))),),
        model_names=BASE_NAMES,
        note="Classification average = plain mean of the four classification means (only when all four exist)."),
    "multibench3": TableSpec(
        name="multibench3", paper_table="multibench_3mod",
        title="MultiBench, 2 vs 3 modalities: linear-probe balanced accuracy (%)",
        columns=(
            Column("vt_cp", "V&T CP", None, "acc1", "visionandtouch-bin_contact", _ACC),
            Column("humor", "UR-FUNNY", None, "acc1", "humor", _ACC),
        ),
        variants=(Variant("(2)", (("vt_cp", "visionandtouch_bin"), ("humor", "humor"))),
                  Variant("(3)", (("vt_cp", "visionandtouch_bin_3mod"), ("humor", "humor_3mod")))),
        model_names=BASE_NAMES,
        paper_suffix=_n_mod_suffix,
        note="(2) rows: 2-modality benchmarks visionandtouch_bin / humor; (3) rows: visionandtouch_bin_3mod / "
             "humor_3mod."),
    "mmimdb": TableSpec(
        name="mmimdb", paper_table="mmimdb",
        title="MM-IMDb: linear-probe F1 (%)",
        columns=(
            Column("weighted_f1", "weighted-F1", None, "f1_weighted", "mmimdb", "weighted_f1_pct", decimals=2),
            Column("macro_f1", "macro-F1", None, "f1_mean", "mmimdb", "macro_f1_pct", decimals=2),
        ),
        variants=(Variant("(V+L)", (("weighted_f1", "mmimdb"), ("macro_f1", "mmimdb"))),),
        model_names=(("infmasking", "InfMasking (CLIP backbone)"), ("comm", "CoMM (CLIP backbone)"),
                     ("cross", "Cross (CLIP backbone)"), ("cross_self", "Cross+Self (CLIP backbone)"),
                     ("cmc", "CMC (CLIP backbone)")),
        paper_suffix=lambda row: f"({row['modalities']})",
        note="Config chosen by validation macro-F1 (f1_mean). Rows marked [cached features] trained the fusion on "
             "precomputed frozen-tower features (data.feature_cache=True)."),
}
TABLE_NAMES = tuple(TABLES)


# =============================================================================================== tables

@dataclass
class Cell:
    mean: float | None = None           # scaled (×100 / ×1e4)
    std: float | None = None            # scaled sample std (ddof=1)
    n: int | None = None                # seeds; None for a derived cell
    seeds: tuple = ()
    values: tuple = ()                  # scaled per-seed test values, in seed order
    config_hash: str | None = None
    selected_on: str | None = None      # e.g. "val acc1 (task all), max"
    val_score: float | None = None      # raw mean validation metric of the chosen config
    n_configs: int = 0                  # configs compared
    config_label: str = ""              # the chosen config in hyper-parameters (ρ, τ; the sweep it came from)
    paper_mean: float | None = None
    paper_std: float | None = None
    paper_source: str | None = None

    @property
    def diff(self) -> float | None:
        if self.mean is None or self.paper_mean is None:
            return None
        return self.mean - self.paper_mean


@dataclass
class TableRow:
    model: str                          # display model name (paper spelling)
    suffix: str
    method: str | None = None           # our method, None for a published-only row
    preset: str | None = None
    protocol: str | None = None
    cached: bool = False
    cells: dict[str, Cell] = field(default_factory=dict)

    @property
    def ours(self) -> bool:
        return self.method is not None

    @property
    def label(self) -> str:
        label = f"{self.model} {self.suffix}".strip()
        return label + (" [cached features]" if self.cached else "")

    def config(self, columns) -> str:
        """The configs the row's cells were chosen from: one label, or `column: label` where they differ."""
        labels = {c.key: self.cells[c.key].config_label for c in columns
                  if c.key in self.cells and self.cells[c.key].config_label}
        if len(set(labels.values())) <= 1:
            return next(iter(labels.values()), "")
        by_label: dict[str, list[str]] = {}
        for key, label in labels.items():
            by_label.setdefault(label, []).append(key)
        return "; ".join(f"{', '.join(keys)}: {label}" for label, keys in by_label.items())


@dataclass
class TableReport:
    spec: TableSpec
    rows: list[TableRow]
    runs_note: str = ""                 # which runs the table was built from (run_selection.RunFilter.describe)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def has_ours(self) -> bool:
        return any(r.ours and any(c.mean is not None for c in r.cells.values()) for r in self.rows)

    def best_row(self, key: str) -> int | None:
        """Index of our row with the best mean in column `key`."""
        col = next(c for c in self.spec.columns if c.key == key)
        best = None
        for i, r in enumerate(self.rows):
            m = r.cells[key].mean if r.ours else None
            if m is not None and (best is None or _better(m, self.rows[best].cells[key].mean, col.goal)):
                best = i
        return best

    def to_frame(self) -> pd.DataFrame:
        """Tidy: one line per (row, column) with numbers, not strings (the .csv file)."""
        out = []
        for r in self.rows:
            for c in self.spec.columns:
                cell = r.cells[c.key]
                out.append({
                    "table": self.name, "row": r.label, "model": r.model, "variant": r.suffix,
                    "method": r.method or "", "source": "ours" if r.ours else "published only",
                    "preset": r.preset or "", "protocol": r.protocol or "", "config": cell.config_label,
                    "mode": ("cached features" if r.cached else "online") if r.ours else "",
                    "column": c.key, "label": c.label, "metric": c.metric, "scale": c.scale, "goal": c.goal,
                    "ours_mean": cell.mean, "ours_std": cell.std, "n_seeds": cell.n,
                    "seeds": " ".join(str(s) for s in cell.seeds), "std_kind": "sample (ddof=1)",
                    "config_hash": cell.config_hash or "", "selected_on": cell.selected_on or "",
                    "val_score": cell.val_score, "n_configs": cell.n_configs,
                    "paper_mean": cell.paper_mean, "paper_std": cell.paper_std,
                    "paper_source": cell.paper_source or "", "diff": cell.diff})
        frame = pd.DataFrame(out)
        frame["n_seeds"] = frame["n_seeds"].astype("Int64")
        return frame

    # ------------------------------------------------------------------ rendering
    def _grid(self, fmt_bold: Callable[[str], str], pm: str, club: str, dash: str = "") -> tuple[list[str], list[list[str]]]:
        header = ["Model", "preset", "protocol", "config"]
        for c in self.spec.columns:
            header += [f"{c.label} {c.arrow}", "paper", "Δ", "n"]
        best = {c.key: self.best_row(c.key) for c in self.spec.columns}
        body = []
        for i, r in enumerate(self.rows):
            line = [r.label, r.preset or ("published" if not r.ours else ""), r.protocol or "",
                    r.config(self.spec.columns) if r.ours else ""]
            for c in self.spec.columns:
                cell = r.cells[c.key]
                ours = _fmt_ms(cell.mean, cell.std, c.decimals, pm) if r.ours else dash
                if ours and best[c.key] == i:
                    ours = fmt_bold(ours)
                paper = _fmt_ms(cell.paper_mean, cell.paper_std, c.decimals, pm)
                if paper and cell.paper_source == "comm-paper":
                    paper += club
                diff = "" if cell.diff is None else f"{cell.diff:+.{c.decimals}f}"
                seeds = "" if not r.ours or cell.n is None else str(cell.n)
                line += [ours, paper, diff, seeds]
            body.append(line)
        return header, body

    def footnote(self) -> str:
        sel = sorted({c.selected_on for r in self.rows for c in r.cells.values() if c.selected_on})
        runs = f"Runs: {self.runs_note}. " if self.runs_note else ""
        return (f"ours: {STD_NOTE} of the test metric (accuracy/F1 ×100, MSE ×10⁴). {runs}Where several configs "
                f"exist for a cell, only those with the full seed set (the most seeds) compete and the one with the "
                f"best validation metric is reported ({'; '.join(sel) or 'n/a'}; ties: more seeds); never selected "
                f"on test; `config` names it (ρ mask ratio, τ temperature, the sweep it came from; its hash is in "
                f"the .csv). Each column: ours, then paper, Δ = ours − paper, n = seeds in the cell. Paper: mean ± std as "
                f"published; ♣ = taken from the CoMM paper. Best of ours per column in bold. {self.spec.note}"
                + (" Rows with protocol 'reference' use the reference's splits, whose validation split is the test "
                   "split for Trifeatures and Vision&Touch: their selection is not clean."
                   if any(r.protocol == "reference" for r in self.rows) else ""))

    def to_markdown(self) -> str:
        header, body = self._grid(lambda s: f"**{s}**", " ± ", " ♣")
        lines = [f"### {self.spec.title}", "", "| " + " | ".join(header) + " |",
                 "|" + "|".join(["---"] + [":---:"] * 2 + ["---"] + ["---:"] * (len(header) - 4)) + "|"]
        lines += ["| " + " | ".join(x.replace("|", "\\|") for x in row) + " |" for row in body]
        return "\n".join(lines + ["", self.footnote(), ""])

    def to_latex(self) -> str:
        header, body = self._grid(lambda s: "\\textbf{" + s + "}", " $\\pm$ ", "$^\\clubsuit$")
        ncol = len(header)
        arrows = {"min": "$\\downarrow$", "max": "$\\uparrow$"}
        lines = [f"% {self.spec.title}", f"% {_latex_escape(self.footnote())}",
                 "\\begin{tabular}{l" + "l" * 3 + "r" * (ncol - 4) + "}", "\\toprule",
                 " & ".join(["Model", "preset", "protocol", "config"] + [
                     "\\multicolumn{4}{c}{" + _latex_escape(c.label) + " " + arrows[c.goal] + "}"
                     for c in self.spec.columns]) + " \\\\",
                 " & ".join(["", "", "", ""] + ["ours", "paper", "$\\Delta$", "$n$"] * len(self.spec.columns)) + " \\\\",
                 "\\midrule"]
        for row in body:   # the config column is plain text (ρ, τ); the others already carry LaTeX
            lines.append(" & ".join(_latex_escape(x, keep_math=i != 3) for i, x in enumerate(row)) + " \\\\")
        lines += ["\\bottomrule", "\\end{tabular}", ""]
        return "\n".join(lines)

    def to_csv(self) -> str:
        return self.to_frame().to_csv(index=False)


def _fmt_ms(mean, std, decimals: int, pm: str) -> str:
    if mean is None or pd.isna(mean):
        return ""
    if std is None or pd.isna(std):
        return f"{mean:.{decimals}f}"
    return f"{mean:.{decimals}f}{pm}{std:.{decimals}f}"


_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\~{}",
                  "^": r"\^{}", "±": r"$\pm$", "Δ": r"$\Delta$", "↑": r"$\uparrow$", "↓": r"$\downarrow$",
                  "−": "-", "♣": r"$^\clubsuit$", "⁻": "-", "⁴": "4", "×": r"$\times$", "ρ": r"$\rho$",
                  "τ": r"$\tau$", "…": r"\ldots{}"}


def _latex_escape(text: str, keep_math: bool = False) -> str:
    if keep_math:  # cells already carry LaTeX ($\pm$, \textbf{...}); escape only plain characters
        return re.sub(r"(?<!\\)([&%#_])", r"\\\1", text)
    text = text.replace("×10⁻⁴", "×$10^{-4}$").replace("×10⁴", "×$10^{4}$")
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def _paper_cells(spec: TableSpec, paper: pd.DataFrame) -> tuple[list[tuple[str, str]], dict]:
    """Published rows of a table in CSV order as (model, suffix), and {(model, suffix, column key): (mean, std, src)}."""
    sub = paper[paper["table"] == spec.paper_table]
    order, values = [], {}
    for _, row in sub.iterrows():
        suffix = spec.paper_suffix(row)
        if (row["model"], suffix) not in order:
            order.append((row["model"], suffix))
        for c in spec.columns:
            if row["benchmark"] == c.paper_benchmark and row["metric"] == c.paper_metric:
                std = None if pd.isna(row["std"]) else float(row["std"])
                values[(row["model"], suffix, c.key)] = (float(row["mean"]), std, row["source"])
    return order, values


def _selection_default(col: Column) -> tuple[str, str]:
    """the reference's monitored keys: val mse (min) for regression, f1_mean for multilabel, acc1 otherwise."""
    if col.metric in ("mse", "r2", "pearson_r"):
        return "mse", "min"
    if col.metric.startswith("f1"):
        return "f1_mean", "max"
    return "acc1", "max"


def _fill_cell(rows: pd.DataFrame, col: Column) -> Cell:
    """Choose the config on validation, then read its test values (after the choice)."""
    if rows.empty:
        return Cell()
    monitor, goal = monitored_metric(rows)
    if not ((rows["split"] == "val") & (rows["metric"] == monitor)).any():
        monitor, goal = _selection_default(col)   # runs did not log what they claim to monitor
    has_test = rows[(rows["split"] == "test") & (rows["metric"] == col.metric)]

    def can_fill(h: str) -> bool:  # presence of a test value, never its size
        return bool((has_test["config_hash"] == h).any())

    sel = select_config(rows, monitor, goal, task="all", require=can_fill)
    if sel.config_hash is None:
        return Cell()
    chosen = rows[rows["config_hash"] == sel.config_hash]
    first = chosen.iloc[0]
    label = short_label({"method": first["method"], "model": {"mask_ratio": first["mask_ratio"],
                                                              "temperature": first["temperature"]}},
                        method=False, biased=False)
    sweeps = sorted({str(x) for x in chosen["sweep_id"].dropna() if str(x)})
    label += f", sweep {', '.join(sweeps)}" if sweeps else ""
    test = per_run_values(chosen, "test", col.metric, col.task)
    seed_of = chosen.groupby("run_id")["seed"].first()
    order = sorted(test.index, key=lambda rid: seed_of.get(rid, 0))
    values = [test[rid] * col.scale for rid in order]
    st = seed_stats(values)
    return Cell(mean=st.mean, std=st.std, n=st.n, seeds=tuple(int(seed_of[r]) for r in order),
                values=tuple(values), config_hash=sel.config_hash,
                selected_on=f"val {sel.monitor} (mean over tasks), {sel.goal}", val_score=sel.val_score,
                n_configs=len(sel.candidates), config_label=label)


def build_table(results: pd.DataFrame, name: str, paper: pd.DataFrame | None = None,
                runs: RunFilter | None = None) -> TableReport:
    """One paper table from `load_results()` rows: published rows in paper order, ours beside or below them.
    `runs` says which runs it is built from (default: the runs outside sweeps; see pipeline/run_selection.py)."""
    if name not in TABLES:
        raise ValueError(f"name: unknown table {name!r}; valid: {', '.join(TABLES)}")
    spec = TABLES[name]
    paper = load_paper() if paper is None else paper
    runs = RunFilter() if runs is None else runs
    mine = results[results["benchmark"].isin(spec.benchmarks)] if not results.empty else results
    runs_note = "; ".join(x for x in (runs.describe(), runs.left_out(mine)) if x)
    results = runs.apply(results)
    order, published = _paper_cells(spec, paper)

    ours: dict[tuple, TableRow] = {}
    for variant in spec.variants:
        for col in spec.columns:
            bench = variant.benchmark(col.key)
            if bench is None or col.average_of:
                continue
            sub = results[results["benchmark"] == bench]
            if col.biased is not None:
                sub = sub[sub["biased"] == col.biased]
            for (method, preset, protocol, cached), grp in sub.groupby(
                    ["method", "preset", "protocol", "feature_cache"], sort=True):
                key = (method, variant.suffix, preset, protocol, bool(cached))
                row = ours.setdefault(key, TableRow(spec.model_name(method), variant.suffix, method, preset,
                                                    protocol, bool(cached)))
                row.cells[col.key] = _fill_cell(grp, col)

    rows: list[TableRow] = []
    placed = set()
    for model, suffix in order:
        mine = [k for k, r in ours.items() if (r.model, r.suffix) == (model, suffix)]
        if not mine:
            rows.append(TableRow(model, suffix))
        for k in sorted(mine, key=lambda k: (k[2], k[3], k[4])):
            rows.append(ours[k])
            placed.add(k)
    method_rank = {m: i for i, (m, _) in enumerate(spec.model_names)}
    for k in sorted(set(ours) - placed, key=lambda k: (spec.variants.index(
            next(v for v in spec.variants if v.suffix == k[1])), method_rank.get(k[0], 99), k[2:])):
        rows.append(ours[k])

    for r in rows:
        for col in spec.columns:
            cell = r.cells.setdefault(col.key, Cell())
            pub = published.get((r.model, r.suffix, col.key))
            if pub:
                cell.paper_mean, cell.paper_std, cell.paper_source = pub
        for col in spec.columns:
            if col.average_of and r.ours:
                means = [r.cells[k].mean for k in col.average_of]
                if all(m is not None for m in means):
                    r.cells[col.key].mean = float(np.mean(means))
                    r.cells[col.key].selected_on = None
    return TableReport(spec, rows, runs_note)


def tables_for(results: pd.DataFrame, names: Iterable[str] | None = None,
               runs: RunFilter | None = None) -> list[TableReport]:
    """The tables (in TABLES order) that hold at least one of our numbers from the selected runs."""
    reps = [build_table(results, n, runs=runs) for n in (names or TABLES)]
    return [r for r in reps if r.has_ours]


# =============================================================================================== sweeps

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
    rows = store.query("SELECT s.*, (SELECT COUNT(*) FROM sweep_trials t WHERE t.sweep_id = s.sweep_id) AS n_trials "
                       "FROM sweeps s ORDER BY s.created_at, s.sweep_id")
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
    sql = ("SELECT t.*, s.name AS sweep_name, s.benchmark AS s_benchmark, s.method AS s_method, s.metric_name, "
           "s.metric_goal FROM sweep_trials t JOIN sweeps s ON s.sweep_id = t.sweep_id")
    ids = list(sweep_ids) if sweep_ids is not None else None
    if ids is not None:
        if not ids:
            return pd.DataFrame(columns=cols)
        sql += f" WHERE t.sweep_id IN ({','.join('?' * len(ids))})"
    trials = store.query(sql + " ORDER BY t.sweep_id, t.trial_index", ids or ())
    results = load_results(store)
    by_run = {rid: grp for rid, grp in results.groupby("run_id")} if not results.empty else {}
    runs = {r["run_id"]: dict(r) for r in store.query("SELECT run_id, benchmark, method, seed, config_json FROM runs")}
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
                      + f" — val {_fmt_ms(_sc(b['val_mean'], s), _sc(b['val_std'], s), d, ' ± ')}"
                      f" (n={b['n']}); test {_fmt_ms(_sc(b['test_mean'], s), _sc(b['test_std'], s), d, ' ± ') or 'n/a'}"
                      f" (n={b['n_test']})."]
        if not self.best_tasks.empty:
            lines += ["", "Test at the best config, per task: " + "; ".join(
                f"{r.task} {_fmt_ms(r.mean, r.std, d, ' ± ')} (n={r.n})" for r in self.best_tasks.itertuples())]
        lines += ["", "| mask_ratio | temperature | other | seeds | val ours | test ours |", "|---:|---:|---|---:|---:|---:|"]
        for r in self.grid.sort_values(["mask_ratio", "temperature"]).itertuples():
            mark = " ◀ best" if self.best is not None and (r.mask_ratio, r.temperature, r.other) == (
                self.best["mask_ratio"], self.best["temperature"], self.best["other"]) else ""
            lines.append(f"| {r.mask_ratio} | {r.temperature} | {'' if r.other == '{}' else r.other} | {r.n} | "
                         f"{_fmt_ms(_sc(r.val_mean, s), _sc(r.val_std, s), d, ' ± ')}{mark} | "
                         f"{_fmt_ms(_sc(r.test_mean, s), _sc(r.test_std, s), d, ' ± ')} |")
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


# =============================================================================================== plotting

def _wrap(title: str, fig_width_in: float, fontsize: float = 10) -> str:
    import textwrap

    return textwrap.fill(title, max(20, int(fig_width_in * 72 / (0.6 * fontsize))))


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:  # fsynced before it replaces the old figure
        fig.savefig(tmp, format="png")
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
    fig = _figure(1.6 + 1.25 * max(len(temps), 2), 1.4 + 0.8 * max(len(mrs), 2))
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
    fig = _figure(10, 3.8)
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
    fig = _figure(3.2 * len(cols) + 1, 0.9 + 0.42 * max(len(rows), 3))
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
    fig = _figure(13, 3.8 + 0.16 * max(0, len(groups) - 8))
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
    return save_figure(fig, path)


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
    fig = _figure(3.2 * max(1, len(panels)), 3.6 + 0.16 * max(0, len(groups) - 8))
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
    return save_figure(fig, path)


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


def safe_name(text: str) -> str:
    """A file-name-safe spelling of an id (sweep ids, benchmark names)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "unnamed"
