#!/usr/bin/env bash
# Issue 8 GPU check (perf engineer -> lead; not to be committed, nor gpu_wheels/).
# Run from the repository root on the device machine:   bash gpu_check.sh
# Writes under $OUT (default ./gpu_out), at most 7 files: summary.txt, env.txt, log.txt, bench_gpu.json,
# telemetry.json, bench_gpu_extras.json, bench_gpu_fp32.json. Total budget BUDGET seconds (default 150): every
# step runs under `timeout` with what is left, a failed step does not stop the others, the summary comes last.
#
# Needs: a python3 with torch + CUDA (the device image has one) and pytorch_lightning, pandas, scipy, sklearn,
# yaml, h5py (in the image per KINDS.md). kornia is not in the image and nothing can be fetched there: its wheels
# travel in gpu_wheels/ (untracked, not ignored) and are unpacked into /tmp/site. wandb is not in the image either:
# the telemetry read-back then uses a CSV logger in place of the offline W&B run (same gpu/ and perf/ keys).
# Dry run on a CPU machine: ALLOW_CPU=1 PRESET=smoke BUDGET=600 bash gpu_check.sh (NO_WANDB=1: the CSV path).
set -u
PRESET=${PRESET:-paper}
REPO=$(cd "$(dirname "$0")" && pwd)
cd "$REPO"
OUT=${OUT:-$REPO/gpu_out}
mkdir -p "$OUT"
BUDGET=${BUDGET:-150}
T0=$(date +%s)
SUMMARY=$OUT/summary.txt
LOG=$OUT/log.txt
: > "$SUMMARY"
: > "$LOG"
export PYTHONUNBUFFERED=1 WANDB_SILENT=true

say() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$SUMMARY"; }
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
# step NAME MAX_SECONDS CMD... : runs CMD with timeout min(MAX, time left), output appended to log.txt
step() {
  local name=$1 max=$2; shift 2
  local l; l=$(left)
  local t=$(( max < l ? max : l ))
  if [ "$t" -lt 8 ]; then say "SKIP $name (budget spent)"; return 99; fi
  say "RUN  $name (timeout ${t}s)"
  echo "===== $name: $*" >> "$LOG"
  timeout -k 5 "$t" "$@" >> "$LOG" 2>&1
  local rc=$?
  say "END  $name rc=$rc$([ $rc -eq 124 ] && echo ' (timed out)')"
  return $rc
}

# ---------------------------------------------------------------------------------------------- environment
{ nvidia-smi -L 2>&1 || echo "no nvidia-smi"; uname -m; nproc; } > "$OUT/env.txt"
PY=""
for c in python3 /opt/torch/.venv/bin/python3 python /usr/bin/python3 /usr/local/bin/python3; do
  command -v "$c" > /dev/null 2>&1 || continue
  if timeout 60 "$c" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() or '${ALLOW_CPU:-}' else 1)" > /dev/null 2>&1; then
    PY=$(command -v "$c"); break
  fi
done
if [ -z "$PY" ]; then
  say "NO python with torch + CUDA found; tried python3, /opt/torch/.venv/bin/python3, python"
  for c in python3 python; do command -v $c > /dev/null && $c -c "import torch; print(torch.__version__, torch.cuda.is_available())" >> "$OUT/env.txt" 2>&1; done
  say "nothing else can run; see env.txt"; exit 0
fi
say "python: $PY"
mkdir -p /tmp/site
export PYTHONPATH="$REPO:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c "import kornia" > /dev/null 2>&1; then
  WHEELS=$(ls gpu_wheels/*.whl .whl/*.whl 2> /dev/null)
  if [ -n "$WHEELS" ]; then
    # unzip rather than pip: works without pip or an index, and never touches the image's own torch
    "$PY" -c "import sys, zipfile; [zipfile.ZipFile(w).extractall('/tmp/site') for w in sys.argv[1:]]" $WHEELS \
      && say "unpacked $(echo $WHEELS | wc -w) wheels into /tmp/site" || say "could not unpack the wheels"
  else
    say "kornia missing and no wheels in gpu_wheels/ or .whl/"
  fi
fi
"$PY" - >> "$OUT/env.txt" 2>&1 << 'EOF'
import importlib, platform
print("python", platform.python_version())
for m in ["torch", "pytorch_lightning", "torchmetrics", "kornia", "kornia_rs", "numpy", "pandas", "scipy", "sklearn",
          "yaml", "h5py", "wandb", "pynvml"]:
    try:
        mod = importlib.import_module(m)
        print(m, getattr(mod, "__version__", "?"))
    except Exception as e:
        print(m, "MISSING", type(e).__name__, str(e)[:100])
import torch
print("cuda", torch.cuda.is_available(), torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
print("bf16", torch.cuda.is_available() and torch.cuda.is_bf16_supported())
EOF
sed 's/^/      /' "$OUT/env.txt" | tee -a "$SUMMARY" > /dev/null
"$PY" -c "import pipeline.stages.bench, models.step_phases, data.base" >> "$LOG" 2>&1 \
  && say "project imports OK" || say "project imports FAILED (see log.txt)"

# --------------------------------------------------------------- 1. acceptance: paper config, B=64, >= 3x
step bench_paper 100 "$PY" -m pipeline bench trifeatures --method infmasking --preset "$PRESET" --steps 5 --warmup 2 \
  --json "$OUT/bench_gpu.json"

# ------------------------------------------- 2. GPU smoke pretrain: telemetry keys (gpu/, perf/) read back
WS=/tmp/infmask_ws
step pretrain_smoke 75 "$PY" - "$WS" "$OUT/telemetry.json" << 'EOF'
import glob, json, os, sys, time
ws_root, out = sys.argv[1], sys.argv[2]
os.environ["INFMASK_ROOT"] = ws_root
from pipeline.config import build_config
from pipeline.workspace import Workspace
import pipeline.stages.pretrain as pt
import pipeline.tracking as tr
try:
    if os.environ.get("NO_WANDB"):
        raise ImportError("NO_WANDB set")
    import wandb  # noqa: F401
    os.environ.setdefault("WANDB_MODE", "offline")
    how = "offline W&B run (files/wandb-summary.json)"
except Exception:
    # no wandb in the image: the same Lightning log_dict calls go to a CSV logger instead
    from pytorch_lightning.loggers import CSVLogger
    csv_dir = os.path.join(ws_root, "csv")
    tr.make_logger = lambda cfg, ws, stage, resume_id=None: CSVLogger(csv_dir, name="pretrain", version="smoke")
    pt._finish = lambda logger, exit_code=0: None
    how = "CSV logger (wandb not installed)"
cfg = build_config("trifeatures", "infmasking", "smoke", overrides=[
    "trainer.max_epochs=1", "trainer.log_every_n_steps=1", "probe.every_n_epochs=0"])
t0 = time.time()
res = pt.pretrain(cfg, Workspace.open(ws_root), force=True)
keys = {}
if how.startswith("CSV"):
    import csv
    for row in csv.DictReader(open(os.path.join(ws_root, "csv", "pretrain", "smoke", "metrics.csv"))):
        for k, v in row.items():
            if k.startswith(("gpu/", "perf/")) and v not in ("", None):
                keys[k] = float(v)
else:
    for f in sorted(glob.glob(os.path.join(ws_root, "wandb", "offline-run-*", "files", "wandb-summary.json"))):
        keys.update({k: v for k, v in json.load(open(f)).items() if k.startswith(("gpu/", "perf/"))})
epochs = [json.loads(l) for l in open(os.path.join(res.run_dir, "metrics.jsonl")) if l.strip()]
rep = {"status": res.status, "seconds": round(time.time() - t0, 1), "read_back_from": how,
       "logged_keys": keys, "metrics_jsonl_perf": {k: v for e in epochs for k, v in e.items() if k.startswith("perf/")},
       "train_loss": epochs[-1].get("train/loss") if epochs else None}
json.dump(rep, open(out, "w"), indent=1)
print(json.dumps(rep, indent=1))
EOF

# ----------------------------------------------- 3. each optimisation on the GPU, and the fusion savings
step bench_extras 60 "$PY" -m pipeline bench trifeatures --method infmasking --preset "$PRESET" --steps 3 --warmup 1 \
  --compare none --no-baseline --optimisations --savings --json "$OUT/bench_gpu_extras.json"
# ------------------------------------------------------------ 4. the same acceptance ratio in float32
step bench_fp32 60 "$PY" -m pipeline bench trifeatures --method infmasking --preset "$PRESET" --steps 3 --warmup 2 \
  trainer.precision=32-true --json "$OUT/bench_gpu_fp32.json"

# ------------------------------------------------------------------------------------------------ summary
"$PY" - "$OUT" << 'EOF' 2>&1 | tee -a "$SUMMARY"
import json, os, sys
out = sys.argv[1]
def load(name):
    try:
        return json.load(open(os.path.join(out, name)))
    except Exception as e:
        print(f"{name}: missing ({type(e).__name__})")
        return None
for name in ("bench_gpu.json", "bench_gpu_fp32.json"):
    r = load(name)
    if r:
        f, s = r["fast"], r.get("straightforward", {})
        print(f"{name}: {r['device_name']} {r['precision']} B={r['batch_size']}: fast {f['step_s']} s "
              f"({f['samples_per_s']} samples/s, {f.get('peak_mem_mib')} MiB), straightforward {s.get('step_s')} s "
              f"({s.get('peak_mem_mib')} MiB) -> ratio {r.get('ratio')}x (w/o augmentation {r.get('ratio_model')}x); "
              f"InfMasking/CoMM {r.get('infmasking_over_comm')}x")
        print("  fast breakdown:", f.get("breakdown"))
        print("  straightforward breakdown:", s.get("breakdown"))
r = load("bench_gpu_extras.json")
if r:
    print("optimisations:", json.dumps(r.get("optimisations")))
    print("fusion savings:", json.dumps(r.get("fusion_savings")))
t = load("telemetry.json")
if t:
    print("telemetry:", t["read_back_from"], "status", t["status"])
    for k, v in sorted(t["logged_keys"].items()):
        print(f"  {k} = {v}")
EOF
say "done in $(( $(date +%s) - T0 ))s"
