"""W&B's sweep engine (the `sweeps` package behind W&B's server), asked here instead of the server: its
suggestions from the trials recorded so far, in and out of its own types."""
from __future__ import annotations

import json
import warnings


def load_engine():
    """`sweeps` 0.2.0 warns about pydantic v1-style configs on import; the warnings say nothing about our use."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import sweeps
    return sweeps


def suggest(config: dict, runs: list):
    """One suggestion from the engine (None once a grid is exhausted). Its GP fit warns about length scales at
    bounds on small sweeps; W&B's server does not show those either."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_engine().next_run(config, runs)


def to_python(obj):
    """Engine values are numpy scalars (np.float64, np.int64): not YAML- or JSON-serialisable. Plain Python out."""
    if isinstance(obj, dict):
        return {k: to_python(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_python(v) for v in obj]
    if hasattr(obj, "item") and type(obj).__module__ == "numpy":
        return obj.item()
    return obj


def to_sweep_runs(rows: list[dict], metric_name: str | None) -> list:
    """Trial rows as the engine's SweepRun objects. summary_metrics is set by attribute: sweeps 0.2.0 under
    pydantic 2 silently drops it when passed to the constructor by field name."""
    sweeps = load_engine()
    runs = []
    for row in rows:
        run = sweeps.SweepRun(name=row["trial_id"], config={k: {"value": v} for k, v in
                                                            json.loads(row["params_json"]).items()},
                              state=sweeps.RunState(row["status"]))
        if metric_name and row["metric_value"] is not None:
            run.summary_metrics = {metric_name: float(row["metric_value"])}
        runs.append(run)
    return runs
