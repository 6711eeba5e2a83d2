"""One paper table from the results: our cells (config chosen on validation, test read after), the published
cells beside them, and their Markdown, LaTeX and CSV renderings."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import pandas as pd

from .config_labels import short_label
from .run_selection import RunFilter
from .load import load_paper
from .selection import (STD_NOTE, _better, format_mean_std, monitored_metric, per_run_values, seed_stats,
                        select_config)
from .table_specs import TABLES, Column, TableSpec


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
                ours = format_mean_std(cell.mean, cell.std, c.decimals, pm) if r.ours else dash
                if ours and best[c.key] == i:
                    ours = fmt_bold(ours)
                paper = format_mean_std(cell.paper_mean, cell.paper_std, c.decimals, pm)
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
    `runs` says which runs it is built from (default: the runs outside sweeps; see run_selection.py beside this
    module)."""
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
