"""The InfMasking loss alone: closed form (models.losses) against the explicit-covariance formulation
(models.reference), in time and in peak memory, for `infmask bench --savings` and the performance docs.

    python -m infmask.bench.loss_study [cpu|cuda]

Peak memory is measured in a fresh Python process per formulation, so one measurement cannot reuse the other's
freed memory (the probe is `memory.PeakMemory`, over one forward and backward pass once the inputs are built).
Timings are medians of forward + backward in the calling process.
"""
from __future__ import annotations

import gc
import json
import statistics
import sys
import time

import torch

from .memory import PeakMemory, in_fresh_process, report

FORMULATIONS = ("closed_form", "explicit_covariance")


def _inputs(B: int, P: int, T: int, n: int, device: str, dtype=torch.float32, seed: int = 0):
    g = torch.Generator(device="cpu").manual_seed(seed)

    def leaf(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype).to(device).requires_grad_(True)

    z1 = [leaf(B, P) for _ in range(n + 1)]
    z2 = [leaf(B, P) for _ in range(n + 1)]
    return z1, z2, leaf(T, B, P), leaf(T, B, P)


def _loss(kind: str, z1, z2, k1, k2, temperature: float = 0.1, ratio: float = 0.5) -> torch.Tensor:
    if kind == "closed_form":
        from infmask.models.losses import infmasking_loss
        return infmasking_loss(z1, z2, k1, k2, temperature, ratio)["loss"]
    if kind == "explicit_covariance":
        from infmask.models.reference import reference_infmasking_loss
        return reference_infmasking_loss(z1, z2, list(k1), list(k2), temperature, ratio)["loss"]
    raise ValueError(f"kind must be one of {FORMULATIONS}, got {kind!r}")


def _sync(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure_peak_here(kind: str, B: int, P: int, T: int, n: int = 2, device: str = "cpu") -> dict:
    """Peak extra memory of one forward + backward in this process (use a fresh process: see module docstring)."""
    inputs = _inputs(B, P, T, n, device)
    gc.collect()
    mem = PeakMemory(device)
    mem.start()
    t0 = time.perf_counter()
    _loss(kind, *inputs).backward()
    _sync(device)
    seconds = time.perf_counter() - t0
    peak, _ = mem.stop()
    return {"kind": kind, "B": B, "P": P, "T": T, "n": n, "device": device, "peak_bytes": int(peak),
            "peak_mib": round(peak / 2 ** 20, 1), "method": mem.how, "first_call_s": round(seconds, 4)}


def memory_child(spec: str) -> None:
    """Entry point of the fresh process `loss_memory_report` starts."""
    report(measure_peak_here(**json.loads(spec)))


def loss_memory_report(B: int = 1024, P: int = 256, T: int = 8, n: int = 2, device: str = "cpu") -> dict:
    """Peak memory of the loss's forward + backward, closed form vs explicit covariance, one fresh process each."""
    out = {}
    for kind in FORMULATIONS:
        out[kind] = in_fresh_process("infmask.bench.loss_study:memory_child",
                                     {"kind": kind, "B": B, "P": P, "T": T, "n": n, "device": device}, kind)
    out["ratio_explicit_over_closed"] = round(out["explicit_covariance"]["peak_bytes"] /
                                              max(1, out["closed_form"]["peak_bytes"]), 2)
    return out


def loss_timing_report(batch_sizes=(64, 1024), P: int = 256, T: int = 8, n: int = 2, device: str = "cpu",
                       repeats: int = 5) -> dict:
    """Median seconds of forward + backward for both formulations at each batch size (after one warm-up)."""
    rows = []
    for B in batch_sizes:
        inputs = _inputs(B, P, T, n, device)
        row = {"B": B, "P": P, "T": T, "n": n, "device": device}
        for kind in FORMULATIONS:
            times, cpu = [], []
            for i in range(repeats + 1):
                for t in inputs[0] + inputs[1] + list(inputs[2:]):
                    t.grad = None
                _sync(device)
                t0, c0 = time.perf_counter(), time.process_time()
                _loss(kind, *inputs).backward()
                _sync(device)
                if i:
                    times.append(time.perf_counter() - t0)
                    cpu.append(time.process_time() - c0)
            row[f"{kind}_s"] = round(statistics.median(times), 5)
            row[f"{kind}_cpu_s"] = round(statistics.median(cpu), 5)
        row["speedup"] = round(row["explicit_covariance_s"] / row["closed_form_s"], 2)
        rows.append(row)
    return {"rows": rows, "threads": torch.get_num_threads()}


if __name__ == "__main__":
    dev = sys.argv[1] if len(sys.argv) > 1 else "cpu"
    print(json.dumps({"memory": loss_memory_report(device=dev), "timing": loss_timing_report(device=dev)}, indent=1))
