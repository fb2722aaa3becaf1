#!/usr/bin/env bash
# On the GPU machine, from the repository root: build llama.cpp with CUDA and its
# llama-batched-bench (once per machine, into /tmp/llama-build), then measure kvchat's
# engine under load against it (benchmarks/gpu_parallel.py). Needs .gpu/ as
# benchmarks/gpu_pack.sh fills it. Usage:
#   OUT=dir TOTAL=seconds benchmarks/gpu_parallel.sh [--anchor-only] CASE... [--need S...]
#   (CASE: SHAPE:QUANT[@LAYERS]=N,N,.../TOKENS[/CTX], e.g. llama-3.1-8b:Q4_K_M=1,2,4,8,16/128)
set -euo pipefail
. benchmarks/gpu_setup.sh
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
python3 benchmarks/gpu_parallel.py --out "$OUT" \
  --batched-bench "$B/llama.cpp/build/bin/llama-batched-bench" \
  --deadline $(( ${TOTAL:-580} - SECONDS )) "$@"
