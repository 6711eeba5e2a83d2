"""Measurements of the InfMasking loss: closed form (models.losses) against the explicit-covariance formulation
(models.reference_impl), for `infmask bench` and the README.

Peak memory is measured in a fresh Python process per formulation, so one measurement cannot reuse the other's
freed memory: on CPU as the process's peak resident set during one forward and backward pass (the kernel's VmHWM
mark, reset once the inputs are built) minus what was resident before it; on CUDA as
torch.cuda.max_memory_allocated over the same pass minus the memory allocated before it.
Timings are medians of forward + backward in the calling process.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

FORMULATIONS = ("closed_form", "explicit_covariance")
_PACKAGE_PARENT = str(Path(__file__).resolve().parents[1])


def _inputs(B: int, P: int, T: int, n: int, device: str, dtype=torch.float32, seed: int = 0):
    g = torch.Generator(device="cpu").manual_seed(seed)

    def leaf(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype).to(device).requires_grad_(True)

    z1 = [leaf(B, P) for _ in range(n + 1)]
    z2 = [leaf(B, P) for _ in range(n + 1)]
    return z1, z2, leaf(T, B, P), leaf(T, B, P)


def _loss(kind: str, z1, z2, k1, k2, temperature: float = 0.1, ratio: float = 0.5) -> torch.Tensor:
    if kind == "closed_form":
        from .losses import infmasking_loss
        return infmasking_loss(z1, z2, k1, k2, temperature, ratio)["loss"]
    if kind == "explicit_covariance":
        from .reference_impl import reference_infmasking_loss
        return reference_infmasking_loss(z1, z2, list(k1), list(k2), temperature, ratio)["loss"]
    raise ValueError(f"kind must be one of {FORMULATIONS}, got {kind!r}")


def _sync(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _rss_now_and_reset_peak() -> tuple:
    """(current resident bytes, whether the kernel's peak-RSS mark VmHWM could be reset to it)."""
    with open("/proc/self/statm") as fh:
        rss = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    try:
        with open("/proc/self/clear_refs", "w") as fh:      # "5" resets VmHWM (Linux >= 4.0)
            fh.write("5")
        return rss, True
    except OSError:
        return rss, False


def _peak_rss() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


def measure_peak_here(kind: str, B: int, P: int, T: int, n: int = 2, device: str = "cpu") -> dict:
    """Peak extra memory of one forward + backward in this process (use a fresh process: see module docstring).

    CPU: the kernel's peak-resident mark is reset after the inputs are built, so the figure is the pass's own
    peak over what was resident before it (ru_maxrss growth where /proc cannot be used)."""
    import gc
    import resource
    inputs = _inputs(B, P, T, n, device)
    gc.collect()
    reset = False
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        try:
            base, reset = _rss_now_and_reset_peak()
        except OSError:
            base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024      # Linux: KiB
    t0 = time.perf_counter()
    _loss(kind, *inputs).backward()
    _sync(device)
    seconds = time.perf_counter() - t0
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() - base
        how = "torch.cuda.max_memory_allocated"
    elif reset:
        peak = _peak_rss() - base
        how = "peak RSS (VmHWM, reset before the pass) minus RSS before"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
        how = "ru_maxrss growth"
    return {"kind": kind, "B": B, "P": P, "T": T, "n": n, "device": device, "peak_bytes": int(peak),
            "peak_mib": round(peak / 2 ** 20, 1), "method": how, "first_call_s": round(seconds, 4)}


def loss_memory_report(B: int = 1024, P: int = 256, T: int = 8, n: int = 2, device: str = "cpu") -> dict:
    """Peak memory of the loss's forward + backward, closed form vs explicit covariance, one fresh process each."""
    out = {}
    for kind in FORMULATIONS:
        code = ("import json, sys; from infmask.models.benchmarks import measure_peak_here; "
                f"print(json.dumps(measure_peak_here({kind!r}, {B}, {P}, {T}, {n}, {device!r})))")
        env = {**os.environ, "PYTHONPATH": _PACKAGE_PARENT + os.pathsep + os.environ.get("PYTHONPATH", "")}
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"memory measurement of {kind} failed:\n{res.stderr[-2000:]}")
        out[kind] = json.loads(res.stdout.strip().splitlines()[-1])
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


def random_inputs(model_cfg: dict, batch_size: int, image_size: int = 224, seq_len: int = 50,
                  device: str = "cpu", generator: torch.Generator = None) -> list:
    """Random inputs of the right shapes for the encoders of `model_cfg["modalities"]` (timing only)."""
    xs = []
    for i, m in enumerate(model_cfg["modalities"]):
        kw = m.get("encoder_kwargs") or {}
        enc = m["encoder"]
        shape = {"alexnet": (3, image_size, image_size), "resnet18": (3, 128, 128),
                 "affect_transformer": (seq_len, kw.get("n_features", 0)), "mlp": (kw.get("in_dim", 0),),
                 "gru": (24, kw.get("in_dim", 0)), "force": (32, 6), "proprio": (8,)}.get(enc)
        if shape is None:
            raise ValueError(f"modalities[{i}]: no random input for encoder {enc!r}")
        xs.append(torch.randn(batch_size, *shape, generator=generator).to(device))
    return xs


if __name__ == "__main__":
    dev = sys.argv[1] if len(sys.argv) > 1 else "cpu"
    print(json.dumps({"memory": loss_memory_report(device=dev), "timing": loss_timing_report(device=dev)}, indent=1))
