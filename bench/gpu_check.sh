#!/usr/bin/env bash
# Everything that needs a GPU, in one command that ends within 9 minutes (the device tool's
# `run`; bench/README.md gives the exact call):
#
#   bash bench/gpu_check.sh [OUT]      # OUT: where the results go (default $OUT, else
#                                      # bench/results/gpu-check)
#
# Steps, each under its own limit in seconds (timeout, then SIGKILL 5 s later), each
# result written to OUT as soon as it exists (at most 7 files, as the device tool returns 8):
#
#   smoke       45  versions (GPU, driver, Python, NumPy, CuPy, torch) and the backend's GPU
#                   check (a matrix product and an elementwise kernel, read back): if it
#                   fails, the script stops at once with the reason    -> smoke.txt
#   tests      120  pytest -m gpu on real CuPy (parity with NumPy of every op and of the
#                   model, a gradient check, an epoch, float32 discipline, TF32)  -> tests.txt
#   bench      110  training steps (and inference) of minicaps on CuPy and of the PyTorch
#                   peer on CUDA, batches 100 and 128, strict float32  -> bench.txt, and every
#                   number in bench.jsonl as it is measured
#   bench-tf32  85  the same with TF32 matrix products in both         -> bench.txt, bench.jsonl
#   epoch      140  one MNIST epoch of the paper's recipe on the GPU, then its evaluation
#                   (trained and averaged parameters)                  -> epoch.txt, metrics.jsonl
#
# That is 500 s of limits, 525 s with the kill delays. summary.txt gets a line as each step
# ends. STEPS (default "smoke tests bench bench-tf32 epoch") picks steps for a rerun;
# <STEP>_SECONDS (SMOKE_SECONDS, TESTS_SECONDS, BENCH_SECONDS, BENCH_TF32_SECONDS,
# EPOCH_SECONDS) change a limit. MNIST comes from $MINICAPS_DATA, else from data/mnist in the
# repository (git-ignored: copy the four .gz files there and carry it). PYTHON names the
# interpreter (default python3); the repository goes on PYTHONPATH, so nothing is installed:
# NumPy, CuPy, pytest, hypothesis and tqdm must be there (pooch is not needed). The
# checkpoints stay in RUN_DIR (default a temporary folder), out of OUT.
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-${OUT:-$repo/bench/results/gpu-check}}
mkdir -p "$out" && out=$(cd "$out" && pwd) || exit 2
cd "$repo"
py=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -z "${MINICAPS_DATA:-}" ] && [ -d data/mnist ]; then
    export MINICAPS_DATA="$PWD/data/mnist"
fi
steps=" ${STEPS:-smoke tests bench bench-tf32 epoch} "
run_dir=${RUN_DIR:-$(mktemp -d)}
status=0

wanted() { [[ "$steps" == *" $1 "* ]]; }

step() {   # step NAME LOG DEFAULT_SECONDS COMMAND...: run it under its limit, appending to OUT/LOG
    local name=$1 log=$2 var
    var=$(echo "${name}_SECONDS" | tr 'a-z-' 'A-Z_')
    local limit=${!var:-$3}
    shift 3
    local cmd="$*"
    cmd=${cmd//$'\n'/ }
    echo "== $name (at most $limit s): ${cmd:0:200}" | tee -a "$out/$log"
    local start=$SECONDS
    timeout -k 5 "$limit" "$@" 2>&1 | tee -a "$out/$log"
    local rc=${PIPESTATUS[0]}
    local verdict="exit $rc"
    [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && verdict="stopped at its limit of $limit s (exit $rc)"
    echo "== $name: $verdict after $((SECONDS - start)) s" | tee -a "$out/$log" "$out/summary.txt"
    [ "$rc" -eq 0 ] || status=1
    return "$rc"
}

SMOKE='
import platform, sys, time
start = time.time()
import numpy
print("python", platform.python_version(), "numpy", numpy.__version__)
from minicaps import backend
try:
    backend.resolve_device("gpu")       # a product (cuBLAS) and an elementwise kernel, read back
except RuntimeError as e:
    sys.exit(f"GPU CHECK FAILED, nothing else can run: {e}")
print("gpu", backend.gpu_summary(), f"(checked in {time.time() - start:.1f} s)")
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.version.cuda, "sees a GPU:",
          torch.cuda.is_available())
except Exception as e:
    print(f"torch cannot be used ({type(e).__name__}: {e}): the bench has no PyTorch peer")
'

if wanted smoke; then
    { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv \
        || echo "nvidia-smi: not found or failed"; } 2>&1 | tee -a "$out/smoke.txt"
    if ! step smoke smoke.txt 45 "$py" -c "$SMOKE"; then
        echo "== stopping: the GPU cannot be used here (smoke.txt says why)" \
            | tee -a "$out/summary.txt"
        exit 2
    fi
fi
if wanted tests; then
    step tests tests.txt 120 "$py" -m pytest -q -m gpu -p no:cacheprovider --durations=10
fi
if wanted bench; then
    step bench bench.txt 110 "$py" bench/bench.py --no-cpu --batches 100 128 --rounds 1 \
        --repeats 10 --warmup 3 --json-lines "$out/bench.jsonl" --json "$run_dir/bench.json"
fi
if wanted bench-tf32; then
    step bench-tf32 bench.txt 85 "$py" bench/bench.py --no-cpu --batches 100 128 --rounds 1 \
        --repeats 10 --warmup 3 --tf32 --json-lines "$out/bench.jsonl" \
        --json "$run_dir/bench-tf32.json"
fi
if wanted epoch; then
    if [ -n "${MINICAPS_DATA:-}" ] && [ -e "$MINICAPS_DATA/train-images-idx3-ubyte.gz" ]; then
        step epoch epoch.txt 140 "$py" -m minicaps train --device gpu --epochs 1 \
            --out "$run_dir/run"
        cp "$run_dir/run/metrics.jsonl" "$out/" 2>/dev/null \
            || echo "no epoch finished: no metrics.jsonl" | tee -a "$out/epoch.txt"
    else
        echo "== epoch: skipped, no MNIST: put the four .gz files in data/mnist (carry it) or" \
             "name their folder in MINICAPS_DATA" | tee -a "$out/epoch.txt" "$out/summary.txt"
        status=1
    fi
fi
echo "== done: $(wc -l < "$out/summary.txt") steps, status $status; checkpoints in $run_dir"
exit $status
