"""Reading a workspace without creating anything: what it holds, its results store, final probe results,
per-epoch curves, and the published numbers (paper_tables.csv)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..store import ResultsStore
from ..workspace import resolve_root

PAPER_CSV = Path(__file__).resolve().parents[1] / "paper_tables.csv"


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
    counts = ResultsStore(state.db_path).counts()
    state.n_runs, state.n_results, state.n_curves = counts["runs"], counts["results"], counts["curves"]
    state.n_sweeps, state.n_trials = counts["sweeps"], counts["trials"]
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
