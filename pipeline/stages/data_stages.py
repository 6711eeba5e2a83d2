"""`infmask download` and `infmask preprocess`: thin wrappers over the dataset registry."""
from __future__ import annotations

import json
import time
from pathlib import Path

from infmask.data.registry import DATASETS, dataset_for

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
        from infmask.data.urls import BadMirrorURL, check_base_url

        try:
            check_base_url(args.base_url)
        except BadMirrorURL as e:
            raise UsageError(str(e)) from None
    ws = Workspace.open(args.root)
    t0 = time.time()
    out = entry.stage("download")(ws, entry, data_seed=args.data_seed, force=args.force, base_url=args.base_url)
    _log_stage_run(ws, "download", entry.name, {"dataset": entry.name, "kind": entry.kind,
                                                "data_seed": args.data_seed}, out, time.time() - t0)
    return 0


def _log_stage_run(ws, stage: str, name: str, config: dict, out, seconds: float) -> None:
    """Each data stage that did its work is a (small) W&B run too, so the whole pipeline shows up on the dashboard.
    Started afterwards: a stage refused for bad input (exit 2: credentials, a bad file) leaves no run to sync."""
    from ..tracking import start_stage_run

    run = start_stage_run(ws, stage, name, config)
    if run is None:
        return
    try:
        if out is not None:
            files = [p for p in Path(out).rglob("*") if p.is_file()]
            run.summary.update({"data/seconds": seconds, "data/files": len(files),
                                "data/bytes": sum(p.stat().st_size for p in files), "data/path": str(out)})
    finally:
        run.finish()


# Data this process has already made sure of: `infmask run` prepares every variant up front, then its pretrain
# and probe steps ask again; they get the answer without a second check or a second "nothing to do" line. Keyed by
# the processed folder where the dataset's stages module says which it is (Trifeatures' biased and unbiased runs
# share one), else by the whole data section.
_ENSURED: dict[tuple, object] = {}


def _data_key(cfg, ws, entry) -> tuple:
    import importlib

    where = getattr(importlib.import_module(entry.preprocess.split(":")[0]), "processed_dir", None)
    if where is not None:
        try:
            return str(ws.root), str(where(ws, cfg))
        except Exception:  # noqa: BLE001 - a stages module that needs more than (ws, cfg): use the data section
            pass
    return str(ws.root), json.dumps(cfg.to_dict()["data"], sort_keys=True, default=str)


def ensure_data(cfg, ws, force: bool = False):
    """Preprocess what `cfg` trains on (a generated dataset's preprocess generates its raw set when missing);
    idempotent."""
    entry = dataset_for(cfg.data.dataset)
    key = _data_key(cfg, ws, entry)
    if key in _ENSURED and not force and (_ENSURED[key] is None or Path(_ENSURED[key]).exists()):
        return _ENSURED[key]
    _ENSURED[key] = out = entry.stage("preprocess")(ws, entry, cfg, force=force)
    return out


def preprocess_cli(args) -> int:
    spec = benchmark_spec(args.benchmark)
    method = spec.get("methods", ["infmasking"])[0]
    bad = [o for o in args.overrides if not o.lstrip("-").startswith("data.")]
    if bad:
        raise UsageError(f"preprocess takes only data.* overrides, got '{bad[0]}'")
    cfg = build_config(args.benchmark, method, args.preset, overrides=args.overrides)
    ws = Workspace.open(args.root)
    entry = dataset_for(cfg.data.dataset)
    t0 = time.time()
    out = entry.stage("preprocess")(ws, entry, cfg, force=args.force)
    _log_stage_run(ws, "preprocess", f"{args.benchmark}-{args.preset}",
                   {"benchmark": args.benchmark, "preset": args.preset, "data": cfg.to_dict()["data"]}, out,
                   time.time() - t0)
    return 0


def datamodule_for(cfg, ws):
    entry = dataset_for(cfg.data.dataset)
    module, _ = entry.preprocess.split(":")
    import importlib

    return importlib.import_module(module).datamodule(ws, cfg)
