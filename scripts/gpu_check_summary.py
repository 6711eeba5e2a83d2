"""The figures of one `scripts/gpu_check.sh` run, from the JSON it wrote, as summary.txt / summary.json.

    python scripts/gpu_check_summary.py OUT_DIR
    python scripts/gpu_check_summary.py --epochs-for SECONDS OUT_DIR/real_bf16-mixed.json

The second form prints how many epochs of the preset fit in SECONDS, from the real loop's step time and epoch end
(0 when that measurement is missing), for the script's optional training.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

PARITY_TOLERANCE = 1e-2     # bf16 keeps ~3 significant digits; the losses themselves run in float32


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def epochs_for(seconds: float, real_json: Path) -> int:
    res = _load(real_json)
    real = (res or {}).get("real_loop")
    if not real or seconds <= 0:
        return 0
    epoch_s = real["preset_batches_per_epoch"] * real["step_s"] + real.get("epoch_end", {}).get("total", 0.0)
    return int(seconds // max(epoch_s, 1e-9))


def _ms(s) -> str:
    return "-" if s is None else f"{1000 * s:.1f} ms"


def bench_lines(prec: str, res: dict, out: dict) -> list[str]:
    f, s = res["fast"], res.get("straightforward", {})
    row = {"fast_step_s": f["step_s"], "fast_samples_per_s": f["samples_per_s"],
           "straightforward_step_s": s.get("step_s"), "ratio": res.get("ratio"), "ratio_model": res.get("ratio_model"),
           "infmasking_over_comm": res.get("infmasking_over_comm"), "fast_breakdown": f.get("breakdown"),
           "peak_mem_mib": [f.get("peak_mem_mib"), s.get("peak_mem_mib")]}
    lines = [f"  {prec}: fast step {_ms(f['step_s'])} ({f['samples_per_s']} samples/s), straightforward "
             f"{_ms(s.get('step_s'))}: whole step {res.get('ratio')}x (goal >= 3x), without augmentation "
             f"{res.get('ratio_model')}x; InfMasking / CoMM {res.get('infmasking_over_comm')}x; peak memory "
             f"{row['peak_mem_mib'][0]} / {row['peak_mem_mib'][1]} MiB",
             f"    fast breakdown (s): {f.get('breakdown')}"]
    aug = res.get("optimisations", {}).get("augmentation_impl")
    if aug:
        row["augmentation_impl"] = aug
        lines.append(f"    one image view {aug['images']}: fast {_ms(aug['fast_s'])} "
                     f"(host syncs {aug.get('fast_host_syncs', {}).get('count', 'n/a')}), kornia "
                     f"{_ms(aug['kornia_s'])} (host syncs {aug.get('kornia_host_syncs', {}).get('count', 'n/a')})")
    syncs = res.get("optimisations", {}).get("host_syncs_per_forward_backward")
    if syncs:
        row["host_syncs_per_forward_backward"] = syncs
        lines.append(f"    host syncs in one forward + backward: {syncs['count']} {syncs['where']}")
    out.setdefault("bench", {})[prec] = row
    return lines


def parity_lines(res: dict, out: dict) -> list[str]:
    p = res.get("optimisations", {}).get("bf16_autocast")
    if not p:
        return ["bf16 loss parity: not measured"]
    ok = p["loss_rel_diff"] < PARITY_TOLERANCE
    out["bf16_parity"] = {**p, "tolerance": PARITY_TOLERANCE, "pass": ok}
    return [f"bf16 loss parity (same weights, batch and masks): fp32 {p['loss_fp32']:.6f}, bf16 {p['loss_bf16']:.6f}, "
            f"relative difference {p['loss_rel_diff']:.2e}: {'PASS' if ok else 'FAIL'} (< {PARITY_TOLERANCE}); "
            f"forward + backward {_ms(p['fp32_s'])} fp32, {_ms(p['bf16_s'])} bf16"]


def real_lines(name: str, res: dict, out: dict) -> list[str]:
    r = res["real_loop"]
    keep = ("samples_per_s", "bench_samples_per_s", "real_over_bench", "real_over_bench_cpu_time", "step_s_median",
            "data_s_median", "gpu_utilization_pct", "telemetry", "epoch_end", "epoch_samples_per_s_est",
            "epoch_over_bench_est", "steps", "workers")
    out.setdefault("real", {})[name] = {k: r.get(k) for k in keep}
    lines = [f"  {name} ({r['steps']} steps, {r['workers']} loader workers): {r['samples_per_s']} samples/s against "
             f"the bench step's {r['bench_samples_per_s']}: {r['real_over_bench']}x (goal >= 0.9x); GPU utilisation "
             f"{r.get('gpu_utilization_pct', 'n/a')} %",
             f"    step {_ms(r['step_s_median'])} median, {_ms(r['data_s_median'])} of it loader + copy + augmentation;"
             f" epoch end {r.get('epoch_end')}; whole training est. {r.get('epoch_samples_per_s_est')} samples/s "
             f"({r.get('epoch_over_bench_est')}x)"]
    gpu = {k: v for k, v in r.get("telemetry", {}).items() if k.startswith("gpu/")}
    lines.append(f"    telemetry gpu/: {gpu or 'none (no CUDA or no NVML)'}")
    return lines


def summary(out_dir: Path) -> tuple[str, dict]:
    out: dict = {}
    env = (out_dir / "environment.txt")
    lines = [f"GPU check in {out_dir}"]
    if env.exists():
        torch_line = [ln for ln in env.read_text().splitlines() if ln.startswith("torch ")]
        lines.append(torch_line[0] if torch_line else "environment: see environment.txt")
    first = None
    for prec in ("bf16-mixed", "32-true"):
        res = _load(out_dir / f"bench_{prec}.json")
        if res is None:
            lines.append(f"  bench {prec}: missing (see bench_{prec}.log)")
            continue
        if first is None:
            first = res
            out["device"] = res["device_name"]
            lines.insert(1, f"device {res['device_name']} ({res['device']}), {res['benchmark']} preset "
                            f"{res['preset']}, B = {res['batch_size']}")
            lines.append("bench step against the straightforward formulation:")
        lines += bench_lines(prec, res, out)
        if prec == "bf16-mixed":
            lines += parity_lines(res, out)
    lines.append("real training through `pretrain` against the bench step:")
    found = False
    for path in sorted(out_dir.glob("real_*.json")):
        res = _load(path)
        if res and "real_loop" in res:
            found = True
            lines += real_lines(path.stem, res, out)
    if not found:
        lines.append("  missing (see real_*.log)")
    curves = out_dir / "synergy_curves.txt"
    if curves.exists():
        lines.append("biased Trifeatures, per-epoch validation probe (synergy columns):")
        lines += ["  " + ln for ln in curves.read_text().splitlines()]
    return "\n".join(lines), out


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "--epochs-for":
        print(epochs_for(float(argv[1]), Path(argv[2])))
        return 0
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: gpu_check_summary.py OUT_DIR | --epochs-for SECONDS REAL_JSON", file=sys.stderr)
        return 2
    text, data = summary(Path(argv[0]))
    print(text)
    (Path(argv[0]) / "summary.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
