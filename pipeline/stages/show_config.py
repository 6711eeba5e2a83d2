"""`infmask config BENCHMARK [--method M] [--preset P] [--seed S] [KEY=VALUE ...]`: the resolved config as YAML
with each key's source, without importing torch or touching the workspace (also `--print-config` on pretrain,
run and trial, which print what they would train and exit)."""
from __future__ import annotations

import shlex


def header(stage: str, args, extra: list[str] | None = None) -> str:
    """The command a printed config belongs to, for the first comment line."""
    words = ["infmask", stage, *(extra or [])]
    return " ".join(shlex.quote(w) for w in words)


def config_cli(args) -> int:
    from ..config_sources import resolved_yaml

    cmd = [args.benchmark, "--method", args.method, "--preset", args.preset]
    cmd += ["--seed", str(args.seed)] if args.seed is not None else []
    print(resolved_yaml(args.benchmark, args.method, args.preset, seed=args.seed, overrides=args.overrides,
                        header=header("config", args, cmd + list(args.overrides or []))), end="")
    return 0
