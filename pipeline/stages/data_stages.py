"""`infmask download` and `infmask preprocess`, and the data a run trains on: the edge where the workspace and the
config become the plain arguments of the dataset registry's stages (data/interface.py)."""
from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from infmask.data.interface import DataPaths, DatasetError, settings_from
from infmask.data.registry import DATASETS, DatasetEntry, dataset_for

from ..config import benchmark_spec, build_config, methods_of
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


def paths_for(ws, entry: DatasetEntry) -> DataPaths:
    """Where the workspace keeps ``entry``'s files (each build of processed/<dataset>/ names its own subfolder)."""
    return DataPaths(raw=ws.raw(entry.name), processed=ws.processed(entry.name), checksums=ws.checksums)


def settings_for(cfg, entry: DatasetEntry):
    """The dataset's settings from a run's config: its data section, plus the few keys of other sections a dataset
    reads (the model's modalities, the probe protocol, the trainer's device and precision) and the mirror that
    downloads started by a run use ($INFMASK_BASE_URL)."""
    values = {**cfg.to_dict()["data"], "modalities": cfg.model.modalities, "probe_protocol": cfg.probe.protocol,
              "accelerator": cfg.trainer.accelerator, "precision": cfg.trainer.precision,
              "base_url": os.environ.get("INFMASK_BASE_URL") or None}
    return settings_from(entry.stages.settings, values)


@contextlib.contextmanager
def _as_usage_errors():
    """A dataset's refusal (bad input the user can fix) is a one-line usage error (exit 2)."""
    try:
        yield
    except DatasetError as e:
        raise UsageError(str(e)) from None


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
    with _as_usage_errors():
        out = entry.stages.download(entry, paths_for(ws, entry), data_seed=args.data_seed, force=args.force,
                                    base_url=args.base_url)
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
# the processed folder where the dataset says runs share it (Trifeatures' biased and unbiased runs do), else by
# the whole settings.
_ENSURED: dict[tuple, object] = {}


def ensure_data(cfg, ws, force: bool = False):
    """Preprocess what `cfg` trains on (a generated dataset's preprocess generates its raw set when missing);
    idempotent."""
    entry = dataset_for(cfg.data.dataset)
    paths, settings = paths_for(ws, entry), settings_for(cfg, entry)
    stages = entry.stages
    key = (str(ws.root), str(stages.processed_dir(paths, settings)),
           "" if stages.builds_by_processed_dir else repr(settings))
    if key in _ENSURED and not force and (_ENSURED[key] is None or Path(_ENSURED[key]).exists()):
        return _ENSURED[key]
    with _as_usage_errors():
        _ENSURED[key] = out = stages.preprocess(entry, paths, settings, force=force)
    return out


def preprocess_cli(args) -> int:
    spec = benchmark_spec(args.benchmark)
    method = methods_of(spec)[0]
    bad = [o for o in args.overrides if not o.lstrip("-").startswith("data.")]
    if bad:
        raise UsageError(f"preprocess takes only data.* overrides, got '{bad[0]}'")
    cfg = build_config(args.benchmark, method, args.preset, overrides=args.overrides)
    ws = Workspace.open(args.root)
    entry = dataset_for(cfg.data.dataset)
    t0 = time.time()
    with _as_usage_errors():
        out = entry.stages.preprocess(entry, paths_for(ws, entry), settings_for(cfg, entry), force=args.force)
    _log_stage_run(ws, "preprocess", f"{args.benchmark}-{args.preset}",
                   {"benchmark": args.benchmark, "preset": args.preset, "data": cfg.to_dict()["data"]}, out,
                   time.time() - t0)
    return 0


def datamodule_for(cfg, ws):
    entry = dataset_for(cfg.data.dataset)
    with _as_usage_errors():
        return entry.stages.datamodule(entry, paths_for(ws, entry), settings_for(cfg, entry))
