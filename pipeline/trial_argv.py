"""A trial's argv (`--benchmark=B --method=M --preset=P --seed=S --model.mask_ratio=0.5 ...`, as a W&B agent builds
it) read into a checked config, and the handshake of the trial-command check. Shared by the `trial` stage, which
runs it, and the sweep runner, which checks a sweep file's parameters and command before any trial starts."""
from __future__ import annotations

from .config import benchmark_spec, build_config, methods_of, parse_overrides
from .errors import UsageError

CHECK_ENV = "INFMASK_TRIAL_CHECK"          # set: parse and validate the argv, then exit 0 without training
CHECK_PASSED = "infmask trial: command check passed:"


def trial_arguments(argv: list[str]) -> tuple[str, str, str, dict]:
    """benchmark, method, preset and the config overrides of a trial's argv (the seed, when given, stays among the
    overrides, so it is type-checked like every key: 1.5 or "abc" is an error, not seed 1)."""
    ov = parse_overrides([a for a in argv if a != "--"])
    if "benchmark" not in ov:
        raise UsageError("trial needs --benchmark=NAME (and optionally --method, --preset, --seed)")
    spec = benchmark_spec(str(ov["benchmark"]))
    method = str(ov.pop("method", methods_of(spec)[0]))
    preset = str(ov.pop("preset", "cpu"))
    benchmark = str(ov.pop("benchmark"))
    return benchmark, method, preset, ov


def parse_trial_argv(argv: list[str]):
    """The trial's Config and its benchmark's spec; ConfigError or UsageError for a bad argv."""
    benchmark, method, preset, ov = trial_arguments(argv)
    return build_config(benchmark, method, preset, overrides=ov), benchmark_spec(benchmark)
