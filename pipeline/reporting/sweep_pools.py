"""Which sweeps may be shown together, and what a sweep's grid was meant to hold.

Sweeps of one (benchmark, method) are pooled into one heat map only when their fixed parameters (the ones a sweep
gives a single value: preset, data.biased, ...) agree; otherwise each keeps its own figure, titled with what was
fixed. Grid sweeps also say which mask ratios and temperatures they were to try, so a heat map can show the cells
not run yet. Pure functions of `reporting.load_sweeps()` / `load_sweep_trials()` frames.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import pandas as pd

AXES = ("mask_ratio", "temperature")
NOT_FIXED = ("benchmark", "method", "seed")


def _config(config_json) -> dict:
    try:
        return json.loads(config_json) if isinstance(config_json, str) else dict(config_json or {})
    except (TypeError, ValueError):
        return {}


def fixed_parameters(config_json) -> dict:
    """{name: value} of the parameters a sweep holds at one value (other than benchmark, method, seed)."""
    out = {}
    for name, spec in (_config(config_json).get("parameters") or {}).items():
        key = name.lstrip("-")
        if key in NOT_FIXED or key.split(".")[-1] in AXES or not isinstance(spec, dict):
            continue
        if "value" in spec:
            out[key] = spec["value"]
        elif len(spec.get("values") or ()) == 1:
            out[key] = spec["values"][0]
    return out


def grid_axes(config_json) -> dict[str, list]:
    """{"mask_ratio": [...], "temperature": [...]}: the listed values a sweep was to try on each axis."""
    out: dict[str, list] = {a: [] for a in AXES}
    for name, spec in (_config(config_json).get("parameters") or {}).items():
        axis = name.lstrip("-").split(".")[-1]
        if axis in AXES and isinstance(spec, dict):
            values = spec.get("values") or ([spec["value"]] if "value" in spec else [])
            out[axis] += [round(float(v), 10) for v in values if isinstance(v, (int, float))]
    return {a: sorted(set(v)) for a, v in out.items()}


def fixed_text(fixed: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(fixed.items())) or "nothing else fixed"


@dataclass
class SweepPool:
    """Sweeps shown together: same benchmark, method and fixed parameters."""
    benchmark: str | None
    method: str | None
    fixed: dict
    sweep_ids: list[str]
    trials: pd.DataFrame
    axes: dict = field(default_factory=dict)

    @property
    def title(self) -> str:
        which = (f"sweep {self.sweep_ids[0]}" if len(self.sweep_ids) == 1
                 else f"{len(self.sweep_ids)} sweeps pooled ({', '.join(self.sweep_ids)})")
        return f"{self.benchmark}/{self.method}, {fixed_text(self.fixed)}: {which}"

    @property
    def name(self) -> str:
        """File-name stem (reporting.safe_name applies)."""
        if len(self.sweep_ids) == 1:
            return self.sweep_ids[0]
        return f"{self.benchmark}-{self.method}-pooled-" + "-".join(f"{k}_{v}" for k, v in sorted(self.fixed.items()))


def sweep_pools(sweeps: pd.DataFrame, trials: pd.DataFrame, pool: bool = True) -> list[SweepPool]:
    """One pool per (benchmark, method, fixed parameters) when `pool`, else one per sweep; in sweep order."""
    pools: dict[tuple, SweepPool] = {}
    for row in sweeps.itertuples():
        fixed = fixed_parameters(getattr(row, "config_json", None))
        mine = trials[trials["sweep_id"] == row.sweep_id] if not trials.empty else trials
        bench = row.benchmark if row.benchmark else (mine["benchmark"].mode().iloc[0] if not mine.empty else None)
        method = row.method if row.method else (mine["method"].mode().iloc[0] if not mine.empty else None)
        key = (bench, method, json.dumps(fixed, sort_keys=True, default=str)) if pool else (row.sweep_id,)
        axes = grid_axes(getattr(row, "config_json", None))
        if key not in pools:
            pools[key] = SweepPool(bench, method, fixed, [], mine.iloc[0:0], {a: [] for a in AXES})
        p = pools[key]
        p.sweep_ids.append(row.sweep_id)
        p.trials = pd.concat([p.trials, mine]) if not p.trials.empty else mine
        p.axes = {a: sorted(set(p.axes.get(a, [])) | set(axes[a])) for a in AXES}
    return list(pools.values())
