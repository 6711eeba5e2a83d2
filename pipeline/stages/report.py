"""`infmask report`: the paper's tables and sweep summaries from the results store.

    infmask report [--table trifeatures|multibench|multibench3|mmimdb|all] [--preset P] [--tag T] [--group G]
    infmask report --sweep ID            one sweep: best (mask_ratio, temperature) by validation, heat map
    infmask report --sweep all [--benchmark B]
    infmask report --table trifeatures --sweep ID    the table from that sweep's trials (and the sweep's report)

Tables read the runs made outside sweeps unless --sweep names sweeps; --preset, --tag and --group narrow the runs
(pipeline/reporting/run_selection.py); each table's footnote says which runs it read.

Markdown goes to stdout; the same tables are written (atomically) to <root>/reports/ as .md, .csv (tidy, numeric)
and .tex, sweep heat maps as PNG. Numbers are the mean ± sample std (ddof=1) over seeds of the test metric, at
the config chosen on the validation split. The tables are also logged as wandb.Table in a W&B run
(job_type="report"; offline unless WANDB_MODE says otherwise; skipped with --no-wandb or WANDB_MODE=disabled);
W&B stores a logged table as a small run-table artifact, also offline, which `wandb sync` uploads.

Exit codes: 0 written; 2 bad input (unknown table or sweep id); 3 nothing to report (empty results store, or no
rows for the requested table or sweep: NothingToReport).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from infmask.data.durable import atomic_write_text

from .. import reporting as R
from ..errors import NothingToReport, UsageError
from ..reporting.run_selection import RunFilter
from ..workspace import Workspace

EMPTY_HINT = "run e.g. `infmask run trifeatures --preset smoke` first"


def report_cli(args) -> int:
    table = getattr(args, "table", None)
    sweep = getattr(args, "sweep", None)
    benchmark = getattr(args, "benchmark", None)
    if benchmark and not sweep:
        raise UsageError("--benchmark selects sweeps: use it with --sweep all (tables take --table)")
    if table and table != "all" and table not in R.TABLES:
        raise UsageError(f"--table: unknown table {table!r}; valid: {', '.join(R.TABLE_NAMES)}, all")
    if not table and not sweep:
        table = "all"
    runs = RunFilter.from_options(sweep if table else None, getattr(args, "preset", None),
                                  getattr(args, "tag", None), getattr(args, "group", None))

    ws = Workspace.open(getattr(args, "root", None))
    if not ws.db_path.is_file():
        raise NothingToReport(f"the results store {ws.db_path} does not exist yet: nothing to report; {EMPTY_HINT}")
    ws.reports.mkdir(parents=True, exist_ok=True)

    logged: dict = {}
    images: dict = {}
    if table:
        logged.update({f"report/table_{r.name}": r.to_frame() for r in _report_tables(ws, table, runs)})
    if sweep:
        tabs, imgs = _report_sweeps(ws, sweep, benchmark)
        logged.update(tabs)
        images.update(imgs)
    if not getattr(args, "no_wandb", False):
        _log_wandb(ws, logged, images, {"table": table, "sweep": sweep, "benchmark": benchmark})
    return 0


# ------------------------------------------------------------------------------------------------ tables

def report_table(ws: Workspace, which: str = "all", *, log_wandb: bool = True, runs: RunFilter | None = None) -> list:
    """The library entry point (`infmask run` ends with it): print and write one table (or all with results),
    log them to W&B unless disabled; returns the reporting.TableReport objects. Raises NothingToReport."""
    reports = _report_tables(ws, which, runs or RunFilter())
    if log_wandb:
        _log_wandb(ws, {f"report/table_{r.name}": r.to_frame() for r in reports}, {}, {"table": which})
    return reports


def _report_tables(ws: Workspace, which: str, runs: RunFilter) -> list:
    results = R.load_results(ws.root)
    if results.empty:
        raise NothingToReport(f"the results store {ws.db_path} holds no probe results: nothing to report; "
                              f"{EMPTY_HINT}")
    if runs.sweeps and runs.sweeps != ("all",):
        known = set(R.load_sweeps(ws.root)["sweep_id"])
        unknown = [s for s in runs.sweeps if s not in known]
        if unknown:
            raise UsageError(f"--sweep: unknown sweep id {unknown[0]!r}; known: {', '.join(sorted(known)) or 'none'}")
    names = list(R.TABLES) if which == "all" else [which]
    reports = R.tables_for(results, names, runs=runs)
    if not reports:
        need = ", ".join(R.TABLES[which].benchmarks) if which != "all" else "any benchmark"
        left = runs.left_out(results)
        raise NothingToReport(f"no probe results for table {which!r} from {runs.describe()} (it needs runs of "
                              f"{need}){f'; {left}' if left else ''}; nothing to report")
    skipped = [n for n in names if n not in {r.name for r in reports}]
    if skipped:
        print(f"(no results yet for table(s): {', '.join(skipped)})", file=sys.stderr)
    for rep in reports:
        md = rep.to_markdown()
        print(md)
        base = ws.reports / f"table_{rep.name}"
        atomic_write_text(base.with_suffix(".md"), md)
        atomic_write_text(base.with_suffix(".csv"), rep.to_csv())
        atomic_write_text(base.with_suffix(".tex"), rep.to_latex())
        print(f"written: {base}.md, .csv, .tex", file=sys.stderr)
    return reports


# ------------------------------------------------------------------------------------------------ sweeps

def _report_sweeps(ws: Workspace, which: str, benchmark: str | None) -> tuple[dict, dict]:
    sweeps = R.load_sweeps(ws.root)
    if sweeps.empty:
        raise NothingToReport(f"the results store {ws.db_path} holds no sweeps: nothing to report; run "
                              f"`infmask sweep sweeps/<benchmark>.yaml` first")
    if which != "all":
        if which not in set(sweeps["sweep_id"]):
            raise UsageError(f"--sweep: unknown sweep id {which!r}; known: {', '.join(sweeps['sweep_id'])}")
        sweeps = sweeps[sweeps["sweep_id"] == which]
    if benchmark:
        sweeps = sweeps[sweeps["benchmark"] == benchmark]
        if sweeps.empty:
            raise NothingToReport(f"no sweeps for benchmark {benchmark!r}: nothing to report")
    results = R.load_results(ws.root)
    trials = R.load_sweep_trials(ws.root, list(sweeps["sweep_id"]))
    units = R.sweep_pools(sweeps, trials, pool=False)
    if which == "all" and benchmark:  # all sweeps of one benchmark, pooled where their fixed parameters agree
        units += [p for p in R.sweep_pools(sweeps, trials) if len(p.sweep_ids) > 1]
    tables, images, done = {}, {}, 0
    for unit in units:
        title = unit.name
        rep = R.sweep_report(unit.trials, title, results)
        if rep.best is None:
            print(f"sweep {title}: no finished trials with a validation value yet", file=sys.stderr)
            continue
        done += 1
        md = rep.to_markdown()
        base = ws.reports / f"sweep_{R.safe_name(title)}"
        png = R.plot_sweep_heatmap(rep.grid, rep.goal, rep.metric,
                                   f"{unit.title}; val {rep.metric} (mean over seeds)",
                                   Path(f"{base}_heatmap.png"), trials=unit.trials, axes=unit.axes)
        md += f"\nFixed: {R.fixed_text(unit.fixed)}" + (f"; pooled sweeps: {', '.join(unit.sweep_ids)}"
                                                        if len(unit.sweep_ids) > 1 else "") + "."
        md += f"\nHeat map: {png}\n"
        print(md)
        atomic_write_text(base.with_suffix(".md"), md)
        atomic_write_text(base.with_suffix(".csv"), rep.to_csv())
        print(f"written: {base}.md, .csv, {png.name}", file=sys.stderr)
        tables[f"report/sweep_{R.safe_name(title)}"] = rep.grid.drop(columns=["run_ids"])
        images[f"report/sweep_{R.safe_name(title)}_heatmap"] = png
    if not done:
        raise NothingToReport("no finished sweep trials with a validation value: nothing to report")
    return tables, images


# ------------------------------------------------------------------------------------------------ W&B

def _log_wandb(ws: Workspace, tables: dict, images: dict, config: dict) -> None:
    """One run, job_type='report'. Mode comes from WANDB_MODE only (an explicit mode= would override
    WANDB_MODE=disabled); the CLI defaults it to offline."""
    os.environ.setdefault("WANDB_MODE", "offline")
    if os.environ["WANDB_MODE"] == "disabled" or not tables:
        return
    import wandb

    from ..tracking import start_stage_run

    run = start_stage_run(ws, "report", "report-" + "-".join(str(v) for v in config.values() if v),
                          {k: v for k, v in config.items() if v})
    try:
        payload = {k: wandb.Table(dataframe=df.astype(object).where(df.notna(), None)) for k, df in tables.items()}
        payload.update({k: wandb.Image(str(p)) for k, p in images.items()})
        run.log(payload)
    finally:
        run.finish()
    if os.environ["WANDB_MODE"] in ("offline", "dryrun"):
        run_dir = Path(run.dir).parent if getattr(run, "dir", None) else ws.wandb_dir / "wandb"
        print(f"W&B run is offline; upload it later with: wandb sync {run_dir}", file=sys.stderr)
