#!/usr/bin/env bash
# The checks that need a GPU, in one command that ends within a known time:
#
#   bash bench/gpu_check.sh [OUT]          # OUT: where the results go (default bench/results/gpu-check)
#
#  1. machine.txt   the GPU, NumPy and CuPy versions;
#  2. pytest-gpu.txt the tests marked gpu on real CuPy (NumPy/CuPy parity of every op and of
#                    the model, a gradient check, an epoch, checkpoints, float32 discipline);
#  3. bench-gpu.txt and bench-gpu.json: bench.py on the GPU only (minicaps on CuPy, and
#                    PyTorch on CUDA where torch sees the GPU), batches 32 and 128;
#  4. train.txt and metrics.jsonl: the paper's recipe on MNIST on the GPU (epoch times and the
#                    per-epoch test accuracy), for as many epochs as fit in TRAIN_SECONDS;
#  5. with TF32_SECONDS set (for example 120): bench-gpu-tf32.txt and .json, the same benchmark
#                    with TF32 matrix products in both libraries (--tf32), after the rest.
#
# Each step has its own time limit, so a slow or failing step never eats the next one's time:
# TEST_SECONDS (default 150), BENCH_SECONDS (180), TRAIN_SECONDS (180); EPOCHS (default 50) caps
# the training. MNIST comes from $MINICAPS_DATA, else from data/mnist in the repository (a
# git-ignored folder: copy the four .gz files there). PYTHON names the interpreter (default
# python3); the repository is put on PYTHONPATH, so nothing needs installing where NumPy, CuPy,
# SciPy, tqdm, pytest and hypothesis are there already. The checkpoints stay in RUN_DIR
# (default a temporary folder), out of OUT: only the small text files go there.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/results/gpu-check}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -z "${MINICAPS_DATA:-}" ] && [ -d data/mnist ]; then
    export MINICAPS_DATA="$PWD/data/mnist"
fi
run_dir=${RUN_DIR:-$(mktemp -d)}
status=0

step() {   # step NAME SECONDS COMMAND...: run it under its limit, keep its output, note its status
    local name=$1 limit=$2
    shift 2
    echo "== $name (at most $limit s): $*"
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$out/$name.txt"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$out/$name.txt"
    [ "$rc" -eq 0 ] || status=1
}

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "no nvidia-smi"
    "$py" -c "import sys, numpy; print('python', sys.version.split()[0], 'numpy', numpy.__version__)"
    "$py" -c "import cupy; print('cupy', cupy.__version__, cupy.cuda.runtime.getDeviceCount(), 'GPU(s)')" 2>&1
} | tee "$out/machine.txt"

step pytest-gpu "${TEST_SECONDS:-150}" "$py" -m pytest -q -m gpu -p no:cacheprovider
step bench-gpu "${BENCH_SECONDS:-180}" "$py" bench/bench.py --no-cpu --rounds 2 \
    --json "$out/bench-gpu.json"
if [ -n "${MINICAPS_DATA:-}" ] && [ -e "$MINICAPS_DATA/train-images-idx3-ubyte.gz" ]; then
    step train "${TRAIN_SECONDS:-180}" "$py" -m minicaps train --device gpu --epochs "${EPOCHS:-50}" \
        --out "$run_dir" --no-progress
    cp "$run_dir/metrics.jsonl" "$out/" 2>/dev/null || echo "no epoch finished: no metrics.jsonl"
    echo "checkpoints in $run_dir"
else
    echo "== train: skipped, no MNIST: put the four .gz files in data/mnist or name their folder" \
         "in MINICAPS_DATA" | tee "$out/train.txt"
    status=1
fi
if [ -n "${TF32_SECONDS:-}" ]; then
    step bench-gpu-tf32 "$TF32_SECONDS" "$py" bench/bench.py --no-cpu --rounds 2 --tf32 \
        --json "$out/bench-gpu-tf32.json"
fi
exit $status
