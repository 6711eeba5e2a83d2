"""Loading, config selection, aggregation, rendering and plotting of results: the one implementation behind
`infmask report` and the notebooks in notebooks/ (`import infmask.reporting as R`; every public name is here).

Conventions every function here keeps:
- only the results store is read (W&B is a dashboard, not a source);
- a reported number is the mean ± *sample* std (ddof=1) over seeds of a **test** metric;
- where several configs (config_hash) compete for a cell, the winner is chosen on the **validation** split only
  (mean over seeds of the monitored probe metric); test values are read after the choice, never before;
- nothing here raises on an empty store: functions return empty frames / reports that say they are empty, and
  `inspect_workspace` never creates a file or folder (notebooks open missing workspaces too);
- figures are drawn on `matplotlib.figure.Figure` with the Agg canvas (no pyplot, no GUI, no global state) and
  written atomically.

Modules, each importing only those above it:
- `config_labels`: short hyper-parameter labels (method, ρ, τ, biased data) for legends, titles and table rows;
- `run_selection`: which runs a table is built from (`RunFilter`), and how its footnote says so;
- `sweep_pools`: which sweeps may share a figure, and the grid each was meant to cover;
- `selection`: metric scale and direction, seed statistics, the validation-only choice of a config;
- `load`: what a workspace holds, results, curves and the published numbers, read without creating anything;
- `table_specs`: the paper's tables as data (`TABLES`);
- `tables`: one table built from the results, rendered as Markdown, LaTeX and CSV;
- `sweeps`: sweep trials, their grid over seeds and the best point;
- `figures`: sweep and table figures, and how every figure is drawn and saved;
- `curves`: training curves per group of runs.
"""
from .curves import (CURVE_PANELS, curve_groups, curve_labels, plot_task_curves, plot_training_curves,
                     task_panels, throughput_summary)
from .figures import (new_figure, plot_seed_strips, plot_sensitivity, plot_sweep_heatmap, safe_name,
                      save_figure)
from .load import (PAPER_CSV, WorkspaceState, figures_dir, inspect_workspace, load_curves, load_paper,
                   load_results, open_store)
from .run_selection import RunFilter
from .selection import (METRIC_GOAL, METRIC_SCALE, STD_NOTE, SeedStats, Selection, format_mean_std, metric_goal,
                        metric_scale, monitored_metric, per_run_values, seed_stats, select_config)
from .sweep_pools import SweepPool, fixed_text, sweep_pools
from .sweeps import (SweepReport, best_of_grid, load_sweep_trials, load_sweeps, sweep_goal, sweep_grid,
                     sweep_metric, sweep_report)
from .table_specs import BASE_NAMES, TABLE_NAMES, TABLES, Column, TableSpec, Variant
from .tables import Cell, TableReport, TableRow, build_table, tables_for

__all__ = [
    "RunFilter", "SweepPool", "fixed_text", "sweep_pools",
    "CURVE_PANELS", "curve_groups", "curve_labels", "plot_task_curves", "plot_training_curves", "task_panels",
    "throughput_summary",
    "new_figure", "plot_seed_strips", "plot_sensitivity", "plot_sweep_heatmap", "safe_name", "save_figure",
    "PAPER_CSV", "WorkspaceState", "figures_dir", "inspect_workspace", "load_curves", "load_paper", "load_results",
    "open_store",
    "METRIC_GOAL", "METRIC_SCALE", "STD_NOTE", "SeedStats", "Selection", "format_mean_std", "metric_goal",
    "metric_scale", "monitored_metric", "per_run_values", "seed_stats", "select_config",
    "SweepReport", "best_of_grid", "load_sweep_trials", "load_sweeps", "sweep_goal", "sweep_grid", "sweep_metric",
    "sweep_report",
    "BASE_NAMES", "TABLE_NAMES", "TABLES", "Column", "TableSpec", "Variant",
    "Cell", "TableReport", "TableRow", "build_table", "tables_for",
]
