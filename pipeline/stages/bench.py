"""`infmask bench`: the stage entry; the bench itself is the `infmask.bench` package."""
from __future__ import annotations

import sys

from ..bench import PHASES, bench, format_report, write_json
from ..config import build_config

__all__ = ["PHASES", "bench", "bench_cli", "format_report"]


def bench_cli(args) -> int:
    cfg = build_config(args.benchmark, args.method, args.preset, seed=getattr(args, "seed", None),
                       overrides=list(args.overrides or []))
    to_stdout = args.json == "-"
    log = (lambda s: print(s, file=sys.stderr)) if to_stdout else print
    res = bench(cfg, steps=args.steps, warmup=args.warmup, baseline=not args.no_baseline,
                compare=getattr(args, "compare", "auto"), device=getattr(args, "device", "auto"),
                real_data=bool(getattr(args, "data", False)),
                savings=bool(getattr(args, "savings", False)), extras=bool(getattr(args, "optimisations", False)),
                memory=not getattr(args, "no_memory", False), real_steps=getattr(args, "real_steps", 0) or 0,
                log=log, root=args.root)
    log(format_report(res))
    if args.json:
        write_json(args.json, res)
        if not to_stdout:
            print(f"wrote {args.json}")
    return 0
