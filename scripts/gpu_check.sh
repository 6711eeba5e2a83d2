#!/usr/bin/env bash
# The GPU check: every GPU figure docs/performance.md quotes, from one run of a few minutes on one GPU.
#
#   scripts/gpu_check.sh [OUT_DIR]              # default ./gpu_check_out; then read OUT_DIR/summary.txt
#   GPU_CHECK_DRY=1 scripts/gpu_check.sh OUT    # the same sequence shrunk (smoke preset, CPU, few steps)
#
# 1. `infmask bench trifeatures --preset paper` (B = 64) in bf16-mixed and in 32-true: step times against the
#    straightforward formulation, the phase breakdown, InfMasking / CoMM, and --optimisations (both augmentation
#    implementations with their host syncs, uint8 copies, channels_last, bf16 loss parity on one batch).
# 2. `--real-steps`: the paper preset trained for a fixed number of steps through the real `pretrain` path,
#    its samples/s against the bench step's timed between its steps, NVML utilisation, the telemetry's gpu/ keys
#    and the epoch's end (SSL val loss, probe); then the same with loader workers, if time remains.
# 3. If time remains: InfMasking and CoMM on biased Trifeatures at the paper preset for as many epochs as fit,
#    with the per-epoch validation probe (synergy) read from the results store.
# Everything is written under OUT_DIR (JSON, logs, the workspace); summary.txt/summary.json gather the figures.
#
# Environment: PYTHON (default python, with torch for the GPU and this checkout installed: pip install -e .),
# GPU_CHECK_BUDGET_S (wall-time budget, default 420), WANDB_MODE (default offline). No step needs the network once
# the packages are installed.
set -uo pipefail

OUT=${1:-./gpu_check_out}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-python}
BUDGET=${GPU_CHECK_BUDGET_S:-420}
export WANDB_MODE=${WANDB_MODE:-offline} INFMASK_ROOT="$OUT/ws"
START=$(date +%s)
"$PY" -c "import infmask.bench" 2> /dev/null || { echo "gpu_check: $PY cannot import infmask; run" \
    "'$PY -m pip install -e .' in $PWD first" >&2; exit 2; }

if [ "${GPU_CHECK_DRY:-0}" = 1 ]; then
    # the dry run checks the script, not the figures: smallest preset, one CPU thread, no memory subprocesses
    PRESET=smoke STEPS=2 WARMUP=1 REAL=6 WORKERS=2 MAX_EPOCHS=1
    export OMP_NUM_THREADS=1
    COMMON=(--device cpu --threads 1 --no-memory)
else
    PRESET=paper STEPS=10 WARMUP=3 REAL=60 WORKERS=4 MAX_EPOCHS=100
    COMMON=(--device auto)
fi

say() { echo "[gpu_check $(( $(date +%s) - START )) s] $*" | tee -a "$OUT/gpu_check.log"; }
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
# run NAME LIMIT_S CMD...: output to OUT/NAME.log; a stage that fails or runs out of time does not stop the rest
run() {
    local name=$1 limit=$2; shift 2
    say "$name: $*"
    timeout -k 15 "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    [ $rc = 0 ] || say "$name: exit code $rc (see $OUT/$name.log)"
    return $rc
}

say "output in $OUT, preset $PRESET, budget ${BUDGET} s"
{ command -v nvidia-smi > /dev/null && nvidia-smi; "$PY" -c "import torch; print('torch', torch.__version__, \
'cuda', torch.version.cuda, 'available', torch.cuda.is_available(), \
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"; git log -1 --oneline; } \
    > "$OUT/environment.txt" 2>&1
run preprocess 300 "$PY" -m infmask preprocess trifeatures --preset "$PRESET" || exit 1

# 1. the bench step, both precisions
for prec in bf16-mixed 32-true; do
    run "bench_$prec" 240 "$PY" -m infmask bench trifeatures --preset "$PRESET" --steps "$STEPS" \
        --warmup "$WARMUP" --optimisations "${COMMON[@]}" --json "$OUT/bench_$prec.json" "trainer.precision=$prec"
done

# 2. real training against the bench step (the default precision of a GPU run), then with loader workers
run real_bf16-mixed 300 "$PY" -m infmask bench trifeatures --preset "$PRESET" --steps "$STEPS" --warmup "$WARMUP" \
    --no-baseline --compare none --real-steps "$REAL" "${COMMON[@]}" --json "$OUT/real_bf16-mixed.json" \
    trainer.precision=bf16-mixed
if [ "$(left)" -gt 150 ]; then
    run "real_bf16-mixed_workers$WORKERS" 240 "$PY" -m infmask bench trifeatures --preset "$PRESET" \
        --steps "$STEPS" --warmup "$WARMUP" --no-baseline --compare none --real-steps "$REAL" "${COMMON[@]}" \
        --json "$OUT/real_bf16-mixed_workers$WORKERS.json" trainer.precision=bf16-mixed "data.num_workers=$WORKERS"
fi

# 3. InfMasking and CoMM on biased Trifeatures for as many epochs as fit in what is left (half each)
EPOCHS=$("$PY" scripts/gpu_check_summary.py --epochs-for "$(( ($(left) - 30) / 2 ))" "$OUT/real_bf16-mixed.json")
EPOCHS=$(( ${EPOCHS:-0} > MAX_EPOCHS ? MAX_EPOCHS : ${EPOCHS:-0} ))
if [ "${EPOCHS:-0}" -ge 1 ]; then
    share=2
    for method in infmasking comm; do   # a stopped run (timeout's SIGTERM) keeps its probed epochs
        limit=$(( ($(left) - 20) / share )); share=1
        [ "$limit" -gt 30 ] || { say "train_$method: no time left"; continue; }
        run "train_$method" "$limit" "$PY" -m infmask pretrain trifeatures --method "$method" \
            --preset "$PRESET" data.biased=true "trainer.max_epochs=$EPOCHS"
    done
    "$PY" scripts/fidelity/curves.py --root "$OUT/ws" > "$OUT/synergy_curves.txt" 2>&1
else
    say "no time left for the biased-Trifeatures training"
fi

"$PY" scripts/gpu_check_summary.py "$OUT" | tee "$OUT/summary.txt"
say "done"
