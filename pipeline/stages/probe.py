"""`infmask probe RUN`: linear probes on a pretrained checkpoint, which carries its own config.

Clean protocol (default): per task, the regularisation is chosen on the validation split, the probe is refit on
train+val and scored once on test. The labelled `reference` protocol instead chooses on a 60/40 hold-out of train
(the reference's test-time procedure) and, during pretraining, lets the reference's val (= test split for
Trifeatures) drive checkpoint selection.
"""
from __future__ import annotations

import json
from pathlib import Path

from infmask.data.durable import atomic_write_text

from ..config import Config, ConfigError
from ..errors import UsageError, first_line
from ..run_lock import run_lock
from ..store import ResultsStore
from ..workspace import Workspace


def load_checkpoint(path: Path) -> tuple[dict, Config]:
    import torch

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, empty, corrupt, or not a checkpoint at all
        raise UsageError(f"cannot read checkpoint {path}: {type(e).__name__}: {first_line(e)}") from None
    if not isinstance(ckpt, dict) or "infmask_config" not in ckpt or "state_dict" not in ckpt:
        raise UsageError(f"{path} is not an infmask checkpoint (no embedded config or state_dict)")
    try:
        return ckpt, Config.from_dict(ckpt["infmask_config"])
    except ConfigError as e:
        raise UsageError(f"{path}: its embedded config is not valid here ({e})") from None


def load_model(ckpt: dict, cfg: Config, path: Path):
    """The method of ``cfg`` with the checkpoint's weights; a usage error if they do not fit its config."""
    from infmask.models.methods import build_method

    model = build_method(cfg.to_dict())
    try:
        model.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        detail = " ".join(str(e).split())[:300] or type(e).__name__
        raise UsageError(f"the weights in {path} do not fit the config embedded in it ({detail}); the checkpoint "
                         "is damaged or was edited") from None
    return model


def resolve_checkpoint(ref: str, ws: Workspace, which: str | None) -> Path:
    """A run id (from the results store), a run directory, or a checkpoint file."""
    p = Path(ref)
    if p.suffix == ".ckpt" or p.is_file():
        return p
    if not p.is_dir():
        row = ResultsStore(ws.db_path).get_run(ref)
        if row is None or not row.get("run_dir"):
            raise UsageError(f"no run '{ref}' in {ws.db_path} and no such directory; pass a run id, a run "
                             "directory or a .ckpt file")
        p = Path(row["run_dir"])
    kept = "best"
    try:
        kept = Config.load_yaml(p / "config.yaml").probe.checkpoint
    except Exception:
        pass
    path = p / "checkpoints" / f"{which or kept}.ckpt"
    if not path.is_file() and which and which != kept and (p / "checkpoints" / f"{kept}.ckpt").is_file():
        raise UsageError(f"{path} is gone: a finished run keeps only the checkpoint its probe.checkpoint names "
                         f"({kept}.ckpt, weights only); retrain with probe.checkpoint={which} --force to probe the "
                         f"{which} epoch")
    return path


def probe(ckpt_path: Path, ws: Workspace, *, force: bool = False, keep_wandb_run=None) -> dict:
    """Probe the checkpoint; results go to the store and to probe.json in the run's folder of this workspace
    (ws.run_dir of the checkpoint's config), wherever the checkpoint itself lies."""
    ckpt, cfg = load_checkpoint(ckpt_path)
    store = ResultsStore(ws.db_path)
    with run_lock(ws, cfg.run_id, "probe"):
        if store.has_metrics(cfg.run_id, "probe", "test") and not force:
            print(f"{cfg.run_id}: already probed; skipping (use --force to probe again)")
            return {}
        model = load_model(ckpt, cfg, ckpt_path)  # before anything is recorded
        return _probe(ckpt_path, cfg, model, ws, store, keep_wandb_run=keep_wandb_run)


def _probe(ckpt_path: Path, cfg: Config, model, ws: Workspace, store: ResultsStore, *, keep_wandb_run) -> dict:
    import torch

    from .. import probing
    from ..callbacks import probe_split
    from ..tracking import start_run, wandb_id
    from .data_stages import datamodule_for, ensure_data

    run_dir = ws.run_dir(cfg)
    if store.get_run(cfg.run_id) is None:
        store.upsert_run(cfg, status="finished", run_dir=str(run_dir))
    want_cuda = torch.cuda.is_available() and cfg.trainer.accelerator in ("auto", "gpu", "cuda")
    device = torch.device("cuda" if want_cuda else "cpu")
    model.to(device)
    ensure_data(cfg, ws)
    dm = datamodule_for(cfg, ws)
    dm.setup("fit")
    p = cfg.probe

    feats = {split: probing.extract_features(model, dm, split, device)
             for split in ("train", "val", "test")}
    per_val, per_test, costs = {}, {}, {}
    for task, kind in dm.tasks.items():
        train = (feats["train"][0], feats["train"][1][task])
        if p.protocol == "reference":
            res = probing.holdout_select_and_fit(kind, train, p.costs, p.fastsearch, p.max_iter,
                                                 standardize=p.standardize)
            vsplit = probe_split(dm, "val", p.protocol)
            res.val = probing.score(kind, res.model, feats[vsplit][0], feats[vsplit][1][task])
        else:
            res = probing.select_and_fit(kind, train, (feats["val"][0], feats["val"][1][task]), p.costs,
                                         p.fastsearch, p.max_iter, standardize=p.standardize)
        per_val[task], costs[task] = res.val, res.cost
        per_test[task] = probing.evaluate(kind, res, (feats["test"][0], feats["test"][1][task]))  # once, at the end
    mean_val, mean_test = probing.mean_over_tasks(per_val), probing.mean_over_tasks(per_test)

    rows = [("val", "all", k, v) for k, v in mean_val.items()] + [("test", "all", k, v) for k, v in mean_test.items()]
    for task in dm.tasks:
        rows += [("val", task, k, v) for k, v in per_val[task].items()]
        rows += [("test", task, k, v) for k, v in per_test[task].items()]
        rows.append(("val", task, "C", costs[task]))
    store.log_metrics(cfg.run_id, "probe", rows)

    flat = {f"probe/val/{k}": v for k, v in mean_val.items()} | {f"probe/test/{k}": v for k, v in mean_test.items()}
    for task in dm.tasks:
        flat |= {f"probe/val/{task}/{k}": v for k, v in per_val[task].items()}
        flat |= {f"probe/test/{task}/{k}": v for k, v in per_test[task].items()}
        flat[f"probe/{task}/C"] = costs[task]
    atomic_write_text(run_dir / "probe.json",
                      json.dumps({"checkpoint": str(ckpt_path), "protocol": p.protocol, "metrics": flat}, indent=1))
    run = keep_wandb_run
    try:
        if run is None:
            run = start_run(cfg, ws, "probe", resume_id=wandb_id(cfg, "probe"))
        if run is not None:
            run.log(flat)
            for k, v in flat.items():
                run.summary[k] = v
    finally:
        if keep_wandb_run is None and run is not None:
            run.finish()
    _print_probe(cfg, dm.tasks, per_test, mean_val)
    return flat


def _print_probe(cfg, tasks, per_test, mean_val):
    parts = []
    for task in tasks:
        m = per_test[task]
        key = "acc1" if "acc1" in m and "f1_mean" not in m else ("f1_mean" if "f1_mean" in m else "mse")
        parts.append(f"{task} {key}={m[key]:.4f}")
    print(f"{cfg.run_id}: test " + ", ".join(parts) + f" (val {', '.join(f'{k}={v:.4f}' for k, v in mean_val.items() if k in ('acc1', 'mse', 'f1_mean'))})")


def probe_cli(args) -> int:
    ws = Workspace.open(args.root)
    ckpt = resolve_checkpoint(args.run, ws, args.checkpoint)
    print(f"infmask probe {ckpt}: linear probes, workspace {ws.root}", flush=True)
    probe(ckpt, ws, force=args.force)
    from ..tracking import sync_hint

    if hint := sync_hint(ws):
        print(hint)
    return 0
