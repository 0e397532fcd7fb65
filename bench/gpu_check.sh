#!/usr/bin/env bash
# The GPU check, under 8 minutes on one GPU: the CUDA-marked tests, then the layer benchmark
# against F.conv2d (bench/gpu_check.py), writing bench/results/gpu_check_cuda.{csv,json,md}.
#   bash bench/gpu_check.sh [--quick] [--budget-s S] [--autotune] [--dry-run]
# Arguments go to bench/gpu_check.py. --dry-run prints the plan without a GPU and runs no test.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-$PWD/.triton-cache}"   # tests and benchmark share compiled kernels
export TRITON_DEFAULT_FP_FUSION=1
for a in "$@"; do
  if [ "$a" = "--dry-run" ]; then exec "$PY" bench/gpu_check.py "$@"; fi
done
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "gpu_check.sh: no CUDA GPU visible")'
start=$(date +%s)
TRITONWINO_AUTOTUNE=0 "$PY" -m pytest -q -m cuda -p no:xdist tests
echo "cuda tests: $(( $(date +%s) - start )) s"
"$PY" bench/gpu_check.py "$@"
echo "gpu check: $(( $(date +%s) - start )) s in all"
