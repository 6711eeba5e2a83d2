"""`infmask download` and `infmask preprocess`: thin wrappers over the dataset registry."""
from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

from data.registry import DATASETS, dataset_for

from ..config import benchmark_spec, build_config
from ..errors import UsageError
from ..workspace import Workspace


def list_datasets() -> str:
    rows = [("dataset", "kind", "benchmarks", "source")]
    for e in DATASETS.values():
        if e.kind == "generated":
            src = "generated locally (deterministic from --data-seed)"
        elif e.kind == "credentialed":
            src = "credentialed: place " + ", ".join(f.name for f in e.files) + " by hand (see `infmask download %s`)" % e.name
        else:
            src = "; ".join(f"{f.url} ({f.approx_size or f.size or '?'})" for f in e.files)
        rows.append((e.name, e.kind, ",".join(e.benchmarks), src))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}" for r in rows)


def download_cli(args) -> int:
    if args.list:
        print(list_datasets())
        return 0
    if not args.dataset:
        raise UsageError("name a dataset (or --list); valid: " + ", ".join(DATASETS))
    entry = dataset_for(args.dataset)
    if args.base_url:
        from data.urls import BadMirrorURL, check_base_url

        try:
            check_base_url(args.base_url)
        except BadMirrorURL as e:
            raise UsageError(str(e)) from None
    ws = Workspace.open()
    with _stage_run(ws, "download", entry.name, {"dataset": entry.name, "kind": entry.kind,
                                                 "data_seed": args.data_seed}) as run:
        t0 = time.time()
        out = entry.stage("download")(ws, entry, data_seed=args.data_seed, force=args.force, base_url=args.base_url)
        _log_dir(run, out, time.time() - t0)
    return 0


@contextmanager
def _stage_run(ws, stage: str, name: str, config: dict):
    """Each data stage is a (small) W&B run too, so the whole pipeline shows up on the dashboard."""
    from ..tracking import start_stage_run

    run = start_stage_run(ws, stage, name, config)
    try:
        yield run
    except BaseException:
        if run is not None:
            run.finish(exit_code=1)
        raise
    if run is not None:
        run.finish()


def _log_dir(run, out, seconds: float):
    if run is None or out is None:
        return
    files = [p for p in Path(out).rglob("*") if p.is_file()]
    run.summary.update({"data/seconds": seconds, "data/files": len(files),
                        "data/bytes": sum(p.stat().st_size for p in files), "data/path": str(out)})


def ensure_data(cfg, ws, force: bool = False):
    """Preprocess what `cfg` trains on (a generated dataset's preprocess generates its raw set when missing);
    idempotent."""
    entry = dataset_for(cfg.data.dataset)
    return entry.stage("preprocess")(ws, entry, cfg, force=force)


def preprocess_cli(args) -> int:
    spec = benchmark_spec(args.benchmark)
    method = spec.get("methods", ["infmasking"])[0]
    bad = [o for o in args.overrides if not o.lstrip("-").startswith("data.")]
    if bad:
        raise UsageError(f"preprocess takes only data.* overrides, got '{bad[0]}'")
    cfg = build_config(args.benchmark, method, args.preset, overrides=args.overrides)
    ws = Workspace.open()
    entry = dataset_for(cfg.data.dataset)
    with _stage_run(ws, "preprocess", f"{args.benchmark}-{args.preset}", {"benchmark": args.benchmark,
                                                                         "preset": args.preset,
                                                                         "data": cfg.to_dict()["data"]}) as run:
        t0 = time.time()
        out = entry.stage("preprocess")(ws, entry, cfg, force=args.force)
        _log_dir(run, out, time.time() - t0)
    return 0


def datamodule_for(cfg, ws):
    entry = dataset_for(cfg.data.dataset)
    module, _ = entry.preprocess.split(":")
    import importlib

    return importlib.import_module(module).datamodule(ws, cfg)
