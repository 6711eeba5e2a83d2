"""How the per-task probes move with the number of probe training pairs, on the same frozen features.

Loads a pretraining checkpoint, extracts un-augmented features of up to N unbiased train pairs and of the whole
validation split, and for each N fits the project's probe (cost chosen on a 60/40 hold-out of the N pairs, refit
on all N; features standardised) and scores it on validation. Test data is never read.

    python scripts/fidelity/probe_size.py RUN_DIR/checkpoints/last.ckpt --sizes 768,2304,4000,9000
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from infmask import probing
from infmask.stages.data_stages import datamodule_for
from infmask.stages.probe import load_checkpoint
from infmask.workspace import Workspace


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--root", required=True)
    p.add_argument("--sizes", default="768,2304,4000,9000")
    p.add_argument("--tasks", default="share,unique1,synergy")
    a = p.parse_args()
    torch.set_num_threads(1)
    from infmask.models.methods import build_method

    ckpt, cfg = load_checkpoint(a.checkpoint)
    model = build_method(cfg.to_dict())
    model.load_state_dict(ckpt["state_dict"])
    dm = datamodule_for(cfg, Workspace.open(a.root))
    dm.setup("fit")
    sizes = [int(s) for s in a.sizes.split(",")]
    Xtr, Ytr = probing.extract_features(model, dm, "train", "cpu", max_samples=max(sizes))
    Xva, Yva = probing.extract_features(model, dm, "val", "cpu")
    out = {"checkpoint": a.checkpoint, "epoch": ckpt.get("epoch"), "n_train_available": len(Xtr),
           "n_val": len(Xva), "results": {}}
    p_cfg = cfg.probe
    for n in sizes:
        row = {}
        for task in a.tasks.split(","):
            kind = dm.tasks[task]
            y = Ytr[task][:n]
            res = probing.holdout_select_and_fit(kind, (Xtr[:n], y), p_cfg.costs, p_cfg.fastsearch, p_cfg.max_iter,
                                                 standardize=p_cfg.standardize)
            s = probing.evaluate(kind, res, (Xva, Yva[task]))
            row[task] = {k: round(100 * v, 1) for k, v in s.items() if k in ("acc1", "roc_auc")}
            if kind == "binary":
                row[task]["positives"] = int(np.sum(y == 1))
        out["results"][n] = row
        print(json.dumps({"n": n, **row}), flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
