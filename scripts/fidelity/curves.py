"""Per-epoch validation-probe curves of the runs in a workspace's results store, one line per (run, epoch).

    python scripts/fidelity/curves.py --root /path/to/workspace [--like trifeatures-infmasking]

Columns: the mean over tasks and, per task, balanced accuracy (acc1); for synergy also its AUROC. Validation
split only: the lab record never looks at test numbers while choosing a configuration.
"""
from __future__ import annotations

import argparse
import sqlite3
from collections import defaultdict
from pathlib import Path


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", required=True)
    p.add_argument("--like", default="", help="substring of the run id")
    p.add_argument("--last", action="store_true", help="only the last probed epoch of each run")
    a = p.parse_args()
    con = sqlite3.connect(f"file:{Path(a.root) / 'results.sqlite'}?mode=ro", uri=True)
    rows = con.execute(
        "SELECT run_id, step, task, metric, value FROM metrics WHERE stage='pretrain' AND split='val' "
        "AND metric IN ('acc1', 'roc_auc', 'loss') AND run_id LIKE ? ORDER BY run_id, step", (f"%{a.like}%",))
    table = defaultdict(dict)
    for run, step, task, metric, value in rows:
        table[(run, step)][(task, metric)] = value
    cols = [("all", "acc1", "mean"), ("share", "acc1", "shape"), ("unique1", "acc1", "tex1"),
            ("unique2", "acc1", "tex2"), ("synergy", "acc1", "syn"), ("synergy", "roc_auc", "synAUC"),
            ("all", "loss", "ssl_val")]
    print(f"{'run':<48} {'ep':>3} " + " ".join(f"{c[2]:>7}" for c in cols))
    keys = sorted(table)
    if a.last:
        last = {}
        for run, step in keys:
            if ("share", "acc1") in table[(run, step)]:
                last[run] = step
        keys = sorted(last.items())
    for run, step in keys:
        vals = table[(run, step)]
        if ("share", "acc1") not in vals:
            continue
        cells = []
        for task, metric, _ in cols:
            v = vals.get((task, metric))
            cells.append(f"{v * (100 if metric != 'loss' and v is not None and v <= 1 else 1):7.1f}"
                         if v is not None else f"{'-':>7}")
        print(f"{run:<48} {step + 1:>3} " + " ".join(cells))


if __name__ == "__main__":
    main()
