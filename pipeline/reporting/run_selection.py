"""Which runs a paper table is built from, and how that choice is said in the table's footnote.

By default a table reads the runs made outside sweeps (`infmask run`, `pretrain` + `probe`, a `trial` started by
hand): sweep trials are exploratory, often one seed each, and would otherwise compete with the runs made for the
table. `--sweep ID` (or `all`) builds the table from sweep trials instead; `--preset`, `--tag` and `--group` narrow
either set. Pure pandas over `reporting.load_results()` frames (columns `sweep_id`, `preset`, `tags`, `benchmark`,
`method`, `config_hash`).
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd


def _split(values) -> tuple[str, ...]:
    """('a,b', 'c') -> ('a', 'b', 'c'): options given repeatedly or comma-separated."""
    out = []
    for v in values or ():
        out += [s.strip() for s in str(v).split(",") if s.strip()]
    return tuple(out)


@dataclass(frozen=True)
class RunFilter:
    sweeps: tuple[str, ...] = ()     # sweep ids, or ("all",): sweep trials instead of the runs outside sweeps
    presets: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()       # a run's config tracking.tags (sweep trials also carry sweep:<id>)
    groups: tuple[str, ...] = ()     # W&B group benchmark/method/<hash>, or a config hash (prefix)

    @classmethod
    def from_options(cls, sweep=None, preset=None, tag=None, group=None) -> "RunFilter":
        return cls(_split([sweep] if isinstance(sweep, str) else sweep), _split(preset), _split(tag), _split(group))

    def describe(self) -> str:
        if self.sweeps == ("all",):
            scope = "the trials of every sweep (--sweep all)"
        elif self.sweeps:
            scope = f"the trials of sweep {', '.join(self.sweeps)} (--sweep)"
        else:
            scope = "runs outside sweeps (the default; --sweep ID|all reads sweep trials instead)"
        parts = [scope]
        parts += [f"preset {', '.join(self.presets)}"] if self.presets else []
        parts += [f"tag {', '.join(self.tags)}"] if self.tags else []
        parts += [f"group {', '.join(self.groups)}"] if self.groups else []
        return "; ".join(parts)

    def apply(self, results: pd.DataFrame) -> pd.DataFrame:
        if results.empty:
            return results
        in_sweep = results["sweep_id"].notna() & (results["sweep_id"].astype(str) != "")
        if self.sweeps == ("all",):
            keep = in_sweep
        elif self.sweeps:
            keep = results["sweep_id"].isin(self.sweeps)
        else:
            keep = ~in_sweep
        if self.presets:
            keep &= results["preset"].isin(self.presets)
        if self.tags:
            tags = results["tags"] if "tags" in results else pd.Series([()] * len(results), index=results.index)
            keep &= tags.map(lambda ts: any(t in (ts or ()) for t in self.tags))
        if self.groups:
            group = results["benchmark"] + "/" + results["method"] + "/" + results["config_hash"]
            keep &= group.isin(self.groups) | results["config_hash"].map(
                lambda h: any(str(h).startswith(g) for g in self.groups if "/" not in g))
        return results[keep]

    def left_out(self, results: pd.DataFrame) -> str:
        """What the filter left out, in words (empty when nothing was)."""
        if results.empty:
            return ""
        kept = set(self.apply(results)["run_id"])
        dropped = results[~results["run_id"].isin(kept)]
        if dropped.empty:
            return ""
        n_sweep = dropped.loc[dropped["sweep_id"].notna(), "run_id"].nunique()
        n_other = dropped["run_id"].nunique() - n_sweep
        parts = [f"{n_sweep} sweep-trial run(s)"] if n_sweep else []
        parts += [f"{n_other} other run(s)"] if n_other else []
        return " and ".join(parts) + " left out"
