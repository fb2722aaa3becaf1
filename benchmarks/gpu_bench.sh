#!/usr/bin/env bash
# On the GPU machine, from the repository root: build llama.cpp with CUDA and its
# llama-bench (once per machine, into /tmp/llama-build), then measure the given shapes
# with kvchat bench's code (benchmarks/gpu_bench.py). Needs .gpu/ (git-ignored):
# llama.cpp.tar.gz (llama-cpp-python's vendor/llama.cpp, trimmed), py/llama_cpp (its
# Python files), whl/ (pure-Python wheels kvchat needs). Usage:
#   OUT=dir benchmarks/gpu_bench.sh --deadline SECONDS CASE...   (CASE: SHAPE:QUANT[@LAYERS])
set -euo pipefail
. benchmarks/gpu_setup.sh
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
# TOTAL: seconds this whole script may take; what the build left goes to the cases.
python3 benchmarks/gpu_bench.py --out "$OUT" --llama-bench "$B/llama.cpp/build/bin/llama-bench" \
  --deadline $(( ${TOTAL:-580} - SECONDS )) "$@"
