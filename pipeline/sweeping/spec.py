"""The sweep file: W&B's schema, every parameter checked against the benchmark's config the way the trial will
parse it, and what the runner needs of it (`SweepSpec`)."""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import UsageError
from .agent import build_argv
from .engine import load_engine, suggest

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class SweepSpec:
    path: Path
    config: dict                    # the file as written (run_cap included)
    name: str
    run_cap: int | None
    metric_name: str | None
    metric_goal: str
    metric_target: float | None
    benchmark: str | None           # the fixed benchmark, if there is one
    method: str | None              # the fixed method, if there is one
    cwd: Path                       # where the trial command runs (the directory `program` is relative to)
    varying: list = field(default_factory=list)   # parameter names that take several values

    @property
    def engine_config(self) -> dict:
        """What the `sweeps` engine sees: 0.2.0's schema has no `run_cap`, which we enforce ourselves."""
        cfg = copy.deepcopy(self.config)
        cfg.pop("run_cap", None)
        return cfg

    @property
    def search(self) -> str:
        return self.config["method"]

    def default_sweep_id(self) -> str:
        """Same file name and content, same id: rerunning the same command resumes the same sweep."""
        blob = json.dumps({"file": self.path.stem, "name": self.name, "config": self.config}, sort_keys=True,
                          default=str)
        slug = re.sub(r"[^a-z0-9]+", "-", self.path.stem.lower()).strip("-")[:40] or "sweep"
        return f"{slug}-{hashlib.sha256(blob.encode()).hexdigest()[:8]}"


def load_sweep(path: str | os.PathLike) -> SweepSpec:
    """Read and check a sweep file; every problem is a UsageError naming the file and the problem."""
    path = Path(path)
    src = str(path)
    if not path.is_file():
        raise UsageError(f"sweep file '{src}' not found")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UsageError(f"{src}: invalid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(config, dict):
        raise UsageError(f"{src}: a sweep file is a mapping (program, method, metric, parameters, ...), "
                         f"got {type(config).__name__}")
    check_schema(config, src)
    params = config["parameters"]
    for name, spec in params.items():
        if isinstance(spec, dict) and "parameters" in spec:
            raise UsageError(f"{src}: parameter '{name}': nested parameters are not supported; use flat dotted "
                             f"names (e.g. model.mask_ratio) so the trial receives --model.mask_ratio=...")
    check_parameters(params, src)
    run_cap = config.get("run_cap")
    metric = config.get("metric") or {}
    fixed = {k: v["value"] for k, v in params.items() if "value" in v}
    fixed.update({k: v["values"][0] for k, v in params.items() if len(v.get("values") or ()) == 1})
    spec = SweepSpec(
        path=path.resolve(), config=config, name=str(config.get("name") or path.stem), run_cap=run_cap,
        metric_name=metric.get("name"), metric_goal=metric.get("goal", "minimize"), metric_target=metric.get("target"),
        benchmark=fixed.get("benchmark"), method=fixed.get("method"), cwd=_trial_cwd(path, config.get("program")),
        varying=sorted(k for k in params if k not in fixed))
    if spec.search == "bayes" and not spec.metric_name:
        raise UsageError(f"{src}: method bayes needs a metric section (name and goal)")
    _dry_suggestion(spec, src)
    return spec


def check_schema(config: dict, src: str) -> None:
    """W&B's own schema (sweeps 0.2.0), minus `run_cap` which that version lacks and which we check here."""
    cfg = dict(config)
    run_cap = cfg.pop("run_cap", None)
    if run_cap is not None and (isinstance(run_cap, bool) or not isinstance(run_cap, int) or run_cap < 1):
        raise UsageError(f"{src}: run_cap must be a positive integer, got {run_cap!r}")
    try:
        problems = load_engine().schema_violations_from_proposed_config(cfg)
    except ValueError as e:
        problems = [str(e)]
    if problems:
        raise UsageError(f"{src}: not a valid W&B sweep config: {'; '.join(problems)}")
    if not isinstance(cfg.get("parameters"), dict) or not cfg["parameters"]:
        raise UsageError(f"{src}: 'parameters' must be a mapping with at least one parameter")


def candidate_values(spec: dict) -> list:
    """Values that show whether a parameter's range fits the config: every listed value, or a range's ends."""
    if "value" in spec:
        return [spec["value"]]
    if "values" in spec:
        return list(spec["values"])
    if spec.get("distribution") in ("log_uniform", "q_log_uniform"):   # min/max are exponents here
        return [math.exp(spec["min"]), math.exp(spec["max"])]
    if "min" in spec and "max" in spec:
        return [spec["min"], spec["max"]]
    if "mu" in spec:
        return [spec["mu"]]
    return []


def check_parameters(params: dict, src: str) -> None:
    """Every parameter must be a key the benchmark's config declares, with a value it accepts. Checked the way the
    trial itself parses its argv (`infmask trial`'s parser, same defaults), from the very arguments a W&B agent
    builds: each parameter alone for each of its values (or range ends), then all first values together."""
    from ..config import ConfigError
    from ..trial_argv import parse_trial_argv

    if "benchmark" not in params:
        raise UsageError(f"{src}: parameter 'benchmark' is required (the trial needs --benchmark)")
    candidates = {name: candidate_values(spec) for name, spec in params.items()}
    for name, values in candidates.items():
        if not values:
            raise UsageError(f"{src}: parameter '{name}': give value, values, or a distribution with min and max")
    fixed = ("benchmark", "method", "preset")

    def parse(chosen: dict, what: str):
        try:
            parse_trial_argv(build_argv(["${args}"], None, chosen))
        except (ConfigError, UsageError) as e:
            raise UsageError(f"{src}: {what}: {e}") from None

    for benchmark in candidates["benchmark"]:
        for method in candidates.get("method", [None]):
            for preset in candidates.get("preset", [None]):
                trial = {k: v for k, v in zip(fixed, (benchmark, method, preset)) if v is not None}
                parse(trial, " ".join(f"{k}={v}" for k, v in trial.items()))
                for name, values in candidates.items():
                    if name not in fixed:
                        for value in values:
                            parse({**trial, name: value}, f"parameter '{name}' = {value!r}")
                parse({**{k: v[0] for k, v in candidates.items()}, **trial}, "the first values together")


def _trial_cwd(path: Path, program) -> Path:
    """The directory a W&B agent would be started in: the first of the sweep file's directory and its parents in
    which `program` exists (the repository root for `program: pipeline/__main__.py`)."""
    if program:
        for d in [path.resolve().parent, *path.resolve().parents]:
            if (d / str(program)).exists():
                return d
        for d in (Path.cwd(), REPO_ROOT):
            if (d / str(program)).exists():
                return d
    return Path.cwd()


def _dry_suggestion(spec: SweepSpec, src: str) -> None:
    """Ask the engine once, with no runs: it rejects what its schema lets through (e.g. grid over a continuous
    distribution)."""
    try:
        suggest(spec.engine_config, [])
    except (ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{src}: the sweep engine rejects this config: {e}") from None
