#!/usr/bin/env bash
# GPU smoke check (see benchmarks/gpu_smoke.py): run from anywhere on a GPU host, after `make setup`.
#   benchmarks/gpu_smoke.sh [--gpu 0] [--out DIR] [--skip STEP,...] [--jobs-per-gpu 4] [--cpu-dry]
# Sized for under 8 minutes on one GPU; prints the path of its summary JSON last.
set -euo pipefail
cd "$(dirname "$0")/.."
# As the Makefile's tests: no progress bars, one BLAS/OpenMP thread unless a job sets its own.
export TQDM_DISABLE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 PYTHONHASHSEED=0
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-.venv/bin/python}" benchmarks/gpu_smoke.py "$@"
