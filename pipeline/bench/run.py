"""The whole bench run: the formulations built, timed interleaved step by step, the result dict and its report.

See the package docstring (`infmask.bench`) for what each figure means.
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

from ..errors import UsageError
from .inputs import Batches, autocast_for, device_for, precision_for
from .memory import PeakMemory
from .step import PHASES, SPLIT_METHODS, Clock, make_runner, memory_in_subprocess
from .studies import fusion_savings, loss_savings, optimisations


def _host() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _loadavg():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def bench(cfg, *, steps: int = 5, warmup: int = 1, baseline: bool = True, compare: str = "auto",
          device: str = "auto", real_data: bool = False, savings: bool = False,
          extras: bool = False, memory: bool = True, real_steps: int = 0, log=print, root=None) -> dict:
    import torch

    if steps < 1 or warmup < 0:
        raise UsageError(f"--steps must be >= 1 and --warmup >= 0, got {steps} and {warmup}")
    if real_steps:
        from .real_loop import check

        check(cfg, real_steps)
    if compare not in ("auto", "comm", "none"):
        raise UsageError(f"--compare must be auto, comm or none, got {compare!r}")
    dev = device_for(device)
    precision = precision_for(cfg, dev)
    compare_comm = compare == "comm" or (compare == "auto" and cfg.method == "infmasking")
    if compare_comm and cfg.method != "infmasking":
        raise UsageError("--compare comm compares InfMasking with CoMM: use --method infmasking")
    baseline = baseline and cfg.method in SPLIT_METHODS
    load_start = _loadavg()
    batches = Batches(cfg, dev, real_data, root)
    names = ["fast"] + (["straightforward"] if baseline else []) + (["comm"] if compare_comm else [])
    if cfg.trainer.compile:     # the same fast step without torch.compile, for the compile speed-up
        names.append("fast_eager")
    runners = [make_runner(n, cfg, dev, precision) for n in names]
    autocast = autocast_for(precision, dev)
    # CUDA: the allocator's peak, in this process. CPU: freed memory stays resident, so one formulation's peak
    # would hide the next one's; each is measured in a fresh process after the timing (see memory.py).
    real_clock, split_clock, mem = Clock(dev, False), Clock(dev, True), PeakMemory(dev)
    B = cfg.data.batch_size
    log(f"bench {cfg.benchmark}/{cfg.method}/{cfg.preset}: B={B}, {dev}, {precision}, "
        f"{torch.get_num_threads()} threads, formulations: {', '.join(names)}")
    t_all = time.perf_counter()
    for i in range(warmup + steps):
        k = i % len(runners)
        for r in runners[k:] + runners[:k]:
            r.run(batches, real_clock, split_clock, autocast, mem if dev.type == "cuda" else None,
                  record=i >= warmup)
        if i >= warmup:
            log(f"  step {i - warmup + 1}/{steps}: " +
                ", ".join(f"{r.name} {r.step_s[-1]:.3f} s" for r in runners))
    if dev.type != "cuda" and memory:
        for r in runners:
            log(f"  peak memory of {r.name} (fresh process) ...")
            peak = memory_in_subprocess(cfg, r.name, str(dev), torch.get_num_threads(), real_data, root)
            r.mem.append(peak["peak_bytes"])
            mem.how = peak["how"]
    real = None
    if real_steps:      # the real training loop, with the bench step timed between its steps
        from .real_loop import real_loop

        fast = runners[0]
        real = real_loop(cfg, steps=real_steps, warmup=max(1, warmup), device=dev, bench_steps=steps, log=log,
                         root=root, bench_step=lambda: fast.step(batches, real_clock, autocast)[:2])
    res = {"benchmark": cfg.benchmark, "method": cfg.method, "preset": cfg.preset, "config_hash": cfg.config_hash(),
           "batch_size": B, "image_size": cfg.data.image_size, "embed_dim": cfg.model.embed_dim,
           "num_mask": cfg.model.num_mask, "n_layers": cfg.model.n_layers, "steps": steps, "warmup": warmup,
           "device": str(dev), "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else _host(),
           "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
           "precision": precision, "channels_last": bool(cfg.model.channels_last),
           "compile": bool(cfg.trainer.compile), "fast_fusion": bool(cfg.model.fast_fusion),
           "mask_all_subsets": bool(cfg.model.mask_all_subsets), "data": batches.source,
           "raw_batch_bytes": batches.raw_bytes, "peak_mem_method": mem.how, "phases": list(PHASES)}
    for r in runners:
        res[r.name] = r.summary(B)
    if "straightforward" in res:
        f, s = res["fast"], res["straightforward"]
        res["ratio"] = round(s["step_s"] / f["step_s"], 3)
        res["ratio_cpu_time"] = round(s["step_cpu_s"] / f["step_cpu_s"], 3)
        res["throughput_ratio"] = round(f["samples_per_s"] / s["samples_per_s"], 3)
        res["ratio_model"] = round(s["model_step_s"] / f["model_step_s"], 3)
    if "comm" in res:
        res["infmasking_over_comm"] = round(res["fast"]["step_s"] / res["comm"]["step_s"], 3)
        res["infmasking_over_comm_cpu_time"] = round(res["fast"]["step_cpu_s"] / res["comm"]["step_cpu_s"], 3)
        res["infmasking_over_comm_model"] = round(res["fast"]["model_step_s"] / res["comm"]["model_step_s"], 3)
    if "fast_eager" in res:
        res["compile_speedup"] = round(res["fast_eager"]["step_s"] / res["fast"]["step_s"], 3)
    if real is not None:
        from .real_loop import compare as compare_real

        res["real_loop"] = real
        compare_real(res, B)
    if savings and cfg.method == "infmasking":
        log("  fusion savings ...")
        res["fusion_savings"] = fusion_savings(runners[0].method, batches, dev)
        res["loss_savings"] = loss_savings(runners[0].method, dev)
    if extras:
        log("  optimisations ...")
        res["optimisations"] = optimisations(cfg, runners[0].method, batches, dev)
    res["seconds"] = round(time.perf_counter() - t_all, 2)
    res["load_avg"] = {"start": load_start, "end": _loadavg()}
    return res


def format_report(res: dict) -> str:
    names = [n for n in ("fast", "straightforward", "comm", "fast_eager") if n in res]
    lines = [f"{res['benchmark']}/{res['method']}/{res['preset']}  B={res['batch_size']}  {res['device']} "
             f"({res['device_name']})  {res['precision']}  threads={res['threads']}  load={res['load_avg']}",
             f"data: {res['data']}"]
    head = f"{'':<18}" + "".join(f"{n:>17}" for n in names)
    lines.append(head)
    rows = [("step (s)", "step_s"), ("  w/o augment. (s)", "model_step_s"), ("step CPU time (s)", "step_cpu_s"),
            ("samples/s", "samples_per_s"),
            ("peak mem (MiB)", "peak_mem_mib")]
    for label, key in rows:
        lines.append(f"{label:<18}" + "".join(f"{res[n].get(key, '-'):>17}" for n in names))
    lines.append("breakdown (s, phases synchronised):")
    # "forward": the coarse breakdown of methods without a phase split
    for p in PHASES[:1] + ("forward",) + PHASES[1:] + ("total",):
        vals = [res[n].get("breakdown", {}).get(p) for n in names]
        if any(v is not None for v in vals):
            lines.append(f"  {p:<16}" + "".join(f"{'-' if v is None else v:>17}" for v in vals))
    if "ratio" in res:
        lines.append(f"straightforward / fast step time: {res['ratio']}x (CPU time {res['ratio_cpu_time']}x; "
                     f"without the augmentation both share: {res['ratio_model']}x)")
    if "infmasking_over_comm" in res:
        lines.append(f"InfMasking / CoMM step time: {res['infmasking_over_comm']}x "
                     f"(CPU time {res['infmasking_over_comm_cpu_time']}x; without augmentation "
                     f"{res['infmasking_over_comm_model']}x)")
    if "compile_speedup" in res:
        lines.append(f"torch.compile (encoders) speed-up: {res['compile_speedup']}x")
    if "real_loop" in res:
        from .real_loop import format_real

        lines.append(format_real(res["real_loop"]))
    for key in ("fusion_savings", "loss_savings", "optimisations"):
        if key in res:
            lines.append(f"{key}: {json.dumps(res[key])}")
    return "\n".join(lines)


def write_json(path: str, res: dict) -> None:
    from infmask.data.durable import atomic_write_bytes

    text = json.dumps(res, indent=1, default=str) + "\n"
    if path == "-":
        sys.stdout.write(text)
        return
    atomic_write_bytes(Path(path), text.encode(), check=lambda tmp: json.loads(tmp.read_text()))  # verified first
