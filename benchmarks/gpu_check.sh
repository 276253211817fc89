#!/usr/bin/env bash
# On a GPU host with TensorRT (pip install tensorrt, or inside an NGC TensorRT/Triton container), from the
# repository root after scripts/setup.sh:  benchmarks/gpu_check.sh [--preset paper] [--history 10000] [--candidates 512]
# Builds fp16 and int8 TensorRT engines of the paper preset, checks them against PyTorch fp32 on the GPU,
# times the history encoder and the candidate scorer, and prints one table.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
exec "$PY" benchmarks/gpu_check.py "$@"
