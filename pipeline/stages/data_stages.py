"""`infmask download` and `infmask preprocess`: thin wrappers over the dataset registry."""
from __future__ import annotations

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
    ws = Workspace.open()
    entry.stage("download")(ws, entry, data_seed=args.data_seed, force=args.force, base_url=args.base_url)
    return 0


def ensure_data(cfg, ws, force: bool = False):
    """Download (if generated or already fetched) and preprocess what `cfg` trains on; both steps are idempotent."""
    entry = dataset_for(cfg.data.dataset)
    if entry.kind == "generated":
        entry.stage("download")(ws, entry, data_seed=cfg.data.data_seed)
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
    entry.stage("preprocess")(ws, entry, cfg, force=args.force)
    return 0


def datamodule_for(cfg, ws):
    entry = dataset_for(cfg.data.dataset)
    module, _ = entry.preprocess.split(":")
    import importlib

    return importlib.import_module(module).datamodule(ws, cfg)
