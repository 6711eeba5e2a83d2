"""Each saving on its own, measured on this config's model and batch: the fusion's exact savings one at a time
(`--savings`), the loss's closed form, and the optimisations (`--optimisations`: batch augmentation, uint8
batches, channels_last encoders, bf16 autocast).
"""
from __future__ import annotations

import statistics
import time
from contextlib import nullcontext
from pathlib import Path

from .step import SPLIT_METHODS, training_step


def _median_time(fn, reps: int, sync) -> float:
    fn()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def fusion_savings(method, batches, device, reps: int = 3) -> dict:
    """Forward + backward seconds of the fusion alone on one token table, removing the reference's costs one at
    a time: (a) its Python loops over copies, subsets and views; (b) one batched pass, masked views for every
    subset; (c) masked views of the full set only; (d) + shared mask token with log-multiplicity bias and a
    CLS-only last layer (the fast path). (a) and (b)-(d) compute the same outputs for the full set."""
    import torch

    from infmask.models.fusion import keep_count, random_keep_mask
    from infmask.models.reference import reference_masked_views, reference_subsets

    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    enc = method.encoder
    fusion = enc.fusion
    batch = batches.make()
    with torch.no_grad():
        tokens, _, lengths, sizes = enc.tokenize(batch["views"])
    tokens = tokens.detach().requires_grad_(True)
    subset_pos = enc.subset_positions(lengths)
    subsets = enc.subsets()
    T, rho, rnd = enc.num_mask, enc.mask_ratio, enc.keep_rounding

    def jobs(ids):
        # `MultimodalEncoder.mask_jobs` for any choice of subsets (it masks the ones the config names)
        out = []
        for i in ids:
            sl = [lengths[m] for m in subsets[i]]
            out.append((subset_pos[i], random_keep_mask(T, tokens.shape[0], sl, rho, rnd, device=device),
                        sum(keep_count(n, rho, rnd) for n in sl)))
        return out

    all_ids, full_id = list(range(len(subsets))), [len(subsets) - 1]

    def loops():
        B = sizes[0]
        total = 0
        for c in range(len(sizes)):
            x = tokens[c * B:(c + 1) * B]
            z = reference_subsets(enc, x, lengths)
            views = reference_masked_views(enc, x, lengths)
            total = total + sum(t.square().sum() for t in z) + sum(t.square().sum() for v in views for t in v)
        total.backward()

    def batched(ids, fast):
        def run():
            z, zm = fusion.fuse(tokens, None, subset_pos, jobs(ids), fast=fast)
            (sum(t.square().sum() for t in z) + sum(t.square().sum() for t in zm)).backward()
        return run

    L = tokens.shape[1]
    K = sum(keep_count(n, rho, rnd) for n in lengths)
    rows = {
        "a_reference_loops": loops,
        "b_batched_all_subsets": batched(all_ids, False),
        "c_batched_full_set_only": batched(full_id, False),
        "d_fast_shared_mask_token_cls_only": batched(full_id, True),
    }
    out = {"tokens_full_set": L, "kept_tokens_full_set": K, "masked_view_sequence": {"straightforward": L + 1,
                                                                                     "fast": K + 2},
           "views_per_copy": T, "subsets": len(subsets)}
    for k, fn in rows.items():
        out[k + "_s"] = round(_median_time(fn, reps, sync), 5)
    out["speedup_a_over_d"] = round(out["a_reference_loops_s"] / out["d_fast_shared_mask_token_cls_only_s"], 2)
    return out


def loss_savings(method, device, reps: int = 5) -> dict:
    """The loss alone at this config's sizes: closed form vs explicit per-sample covariance (forward+backward)."""
    from .loss_study import loss_timing_report

    m = method.hparams_model
    rep = loss_timing_report(batch_sizes=(int(method.cfg["data"]["batch_size"]),), P=int(m["head_out"]),
                             T=int(m["num_mask"]), n=len(m["modalities"]), device=str(device), repeats=reps)
    return rep["rows"][0]


def optimisations(cfg, method, batches, device, reps: int = 3) -> dict:
    """Each optimisation on its own, measured here: batch vs per-sample augmentation, uint8 vs float32 batches,
    channels_last encoders, bf16 autocast (time and loss parity)."""
    import torch

    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    out = {}
    # batch augmentation on the device vs one sample at a time (the reference augments per sample)
    raw = batches.raw.get("raw") if isinstance(batches.raw, dict) else None
    if raw is not None:
        moved = {"raw": [t.to(device) for t in raw]}

        def per_sample():
            for t in moved["raw"]:
                for _ in range(2):
                    for i in range(t.shape[0]):
                        batches.transform({"raw": [t[i:i + 1]]})
        out["augmentation"] = {"batched_s": round(_median_time(lambda: batches.transform(moved), reps, sync), 5),
                               "per_sample_s": round(_median_time(per_sample, 1, sync), 5)}
        out["augmentation"]["speedup"] = round(out["augmentation"]["per_sample_s"] / out["augmentation"]["batched_s"],
                                               2)
        images = [t for t in moved["raw"] if t.ndim == 4 and t.dtype == torch.uint8]
        if images:
            # one image view: our batched ops (crop+flip as one grid_sample, no host sync) vs kornia's
            from infmask.data.augment import ImageSSLAugment

            size = int(getattr(cfg.data, "image_size", images[0].shape[-2]))
            scale = tuple(getattr(cfg.data, "crop_scale", (0.08, 1.0)))
            res = {"images": f"{tuple(images[0].shape)} uint8"}
            for impl in ImageSSLAugment.IMPLS:
                aug = ImageSSLAugment(size, scale=scale, impl=impl).to(device)
                res[f"{impl}_s"] = round(_median_time(lambda: aug(images[0]), reps, sync), 5)
                if device.type == "cuda":
                    res[f"{impl}_host_syncs"] = _count_syncs(lambda: aug(images[0]))
            res["speedup"] = round(res["kornia_s"] / res["fast_s"], 2)
            out["augmentation_impl"] = res
        u8 = sum(t.numel() * t.element_size() for t in raw)
        out["uint8_batch"] = {"uint8_bytes": u8, "float32_bytes": 4 * u8, "ratio": 4.0}
        if device.type == "cuda":
            host = [t.pin_memory() for t in raw]
            hostf = [t.float().pin_memory() for t in raw]
            out["uint8_batch"]["h2d_uint8_s"] = round(_median_time(lambda: [t.to(device, non_blocking=True)
                                                                            for t in host], reps, sync), 6)
            out["uint8_batch"]["h2d_float32_s"] = round(_median_time(lambda: [t.to(device, non_blocking=True)
                                                                              for t in hostf], reps, sync), 6)
    # channels_last CNN encoders: encoder forward + backward on one augmented batch
    enc = getattr(method, "encoder", None)
    batch = batches.make()
    cnn = [i for i, m in enumerate(cfg.model.modalities) if m.get("encoder") in ("alexnet", "resnet18")]
    if enc is not None and cnn:
        from infmask.models.encoders import build_encoder

        i = cnn[0]
        spec = cfg.model.modalities[i]
        x = torch.cat([batch["views"][0][i], batch["views"][1][i]])
        res = {}
        for cl in (False, True):
            e = build_encoder(spec["encoder"], channels_last=cl, **(spec.get("encoder_kwargs") or {})).to(device)
            e.load_state_dict(getattr(enc.encoders[i], "_orig_mod", enc.encoders[i]).state_dict())
            res["channels_last" if cl else "contiguous"] = round(
                _median_time(lambda: e(x).sum().backward(), reps, sync), 5)
        res["speedup"] = round(res["contiguous"] / res["channels_last"], 2)
        res["encoder"] = f"{spec['encoder']} on {tuple(x.shape)}"
        out["channels_last"] = res
    # bf16 autocast: step forward + backward time and the loss on the same weights, batch and masks
    if cfg.method in SPLIT_METHODS:
        def loss_with(ctx, seed=0):
            torch.manual_seed(seed)
            with ctx:
                return training_step(method, batch)

        def run(ctx):
            def f():
                method.zero_grad(set_to_none=True)
                loss_with(ctx).backward()
            return f
        fp32 = float(loss_with(nullcontext()).detach())
        bf16 = float(loss_with(torch.autocast(device_type=device.type, dtype=torch.bfloat16)).detach())
        res = {"loss_fp32": fp32, "loss_bf16": bf16, "loss_rel_diff": abs(bf16 - fp32) / max(abs(fp32), 1e-12),
               "fp32_s": round(_median_time(run(nullcontext()), reps, sync), 5),
               "bf16_s": round(_median_time(run(torch.autocast(device_type=device.type, dtype=torch.bfloat16)),
                                            reps, sync), 5),
               "loss_in_float32": "the losses upcast their inputs and run with autocast off (models/losses.py)"}
        res["speedup"] = round(res["fp32_s"] / res["bf16_s"], 2)
        out["bf16_autocast"] = res
        method.zero_grad(set_to_none=True)
        if device.type == "cuda":
            out["host_syncs_per_forward_backward"] = _count_syncs(lambda: run(nullcontext())())
    return out


def _count_syncs(fn) -> dict:
    """CUDA: the host-device synchronisations one call makes (torch's sync debug mode), by source line."""
    import warnings

    import torch

    fn()
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    where = {}
    for w in caught:
        if "synchroniz" in str(w.message).lower():
            key = f"{Path(w.filename).name}:{w.lineno}"
            where[key] = where.get(key, 0) + 1
    return {"count": sum(where.values()), "where": where}
