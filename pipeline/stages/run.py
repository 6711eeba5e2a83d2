"""`infmask run BENCHMARK`: every stage in order (download, preprocess, pretrain, probe, report), skipping what
is done. Benchmarks whose table needs several data variants (Trifeatures: unbiased runs for redundancy and
uniqueness, biased runs for synergy) declare them as `run_variants` in their config file."""
from __future__ import annotations

import time

from ..config import benchmark_spec, build_config, methods_of
from ..errors import UsageError
from ..store import ResultsStore
from ..workspace import Workspace


def _split(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def run_cli(args) -> int:
    spec = benchmark_spec(args.benchmark)
    methods = _split(args.methods) or methods_of(spec)
    try:
        seeds = [int(s) for s in _split(args.seeds)]
    except ValueError:
        raise UsageError(f"--seeds must be comma-separated integers, got '{args.seeds}'") from None
    variants = spec.get("run_variants") or [{}]
    # validate everything before any work starts (and before any file is written)
    # seed-major order: an interrupted run leaves complete tables with fewer seeds, not missing columns
    configs = [build_config(args.benchmark, m, args.preset, seed=s, overrides={**v, **_ov(args.overrides)})
               for s in seeds for v in variants for m in methods]
    # an override of a variant's key (e.g. data.biased=false) makes the variants one run, trained once
    configs = list({c.run_id: c for c in configs}.values())
    if getattr(args, "print_config", False):
        return _print_configs(args, methods, variants, seeds)
    ws = Workspace.open(args.root)
    ResultsStore(ws.db_path)  # a damaged store stops the run here, not after the data is prepared
    shape = [f"{len(methods)} method{'s' * (len(methods) != 1)}"]
    n_variants = len(configs) // max(1, len(methods) * len(seeds))
    shape += [f"{n_variants} data variants"] if n_variants > 1 else []
    shape += [f"{len(seeds)} seed{'s' * (len(seeds) != 1)}"]
    runs = f"{len(configs)} run{'s' * (len(configs) != 1)}"
    print(f"infmask run {args.benchmark}: {runs} ({' × '.join(shape)}), preset {args.preset}, "
          f"workspace {ws.root}; each run is pretrained, then probed; the table comes last", flush=True)
    from .data_stages import ensure_data
    from .pretrain import pretrain
    from .probe import probe

    t0 = time.time()
    for cfg in {c.data.__repr__(): c for c in configs}.values():
        ensure_data(cfg, ws)
    for i, cfg in enumerate(configs, 1):
        print(f"[{i}/{len(configs)}] {cfg.run_id} ({'biased' if cfg.data.biased else 'unbiased'}"
              f" data, preset {cfg.preset})", flush=True)
        res = pretrain(cfg, ws, force=args.force)
        if res.status == "worker":
            return 0
        probe(res.run_dir / "checkpoints" / f"{cfg.probe.checkpoint}.ckpt", ws, force=args.force or not res.skipped)
    print(f"all {len(configs)} runs done in {time.time() - t0:.0f} s")
    table = spec.get("table")
    if table:
        from .report import report_table

        report_table(ws, table)
    # one line on what this preset's table can and cannot show (e.g. the demo's: redundancy yes, synergy no)
    if note := (spec.get("preset_notes") or {}).get(args.preset):
        print(note, flush=True)
    from ..tracking import sync_hint

    if hint := sync_hint(ws):
        print(hint)
    return 0


def _print_configs(args, methods, variants, seeds) -> int:
    """One YAML document per (method, data variant), at the first seed (the others differ only in `seed`)."""
    from ..config_sources import resolved_yaml
    from .show_config import header

    docs = []
    for v in variants:
        for m in methods:
            what = header("run", args, [args.benchmark, "--preset", args.preset, *args.overrides])
            what += f": method {m}" + "".join(f", {k}={val}" for k, val in v.items())
            what += f", seeds {','.join(map(str, seeds))} (seed {seeds[0]} shown)" if seeds else ""
            docs.append(resolved_yaml(args.benchmark, m, args.preset, seed=seeds[0] if seeds else None,
                                      overrides=_ov(args.overrides), variant=v, header=what))
    print("---\n".join(docs), end="")
    return 0


def _ov(overrides) -> dict:
    from ..config import parse_overrides

    return parse_overrides(list(overrides or []))
