#!/usr/bin/env bash
# On the GPU machine, from the repository root: build llama.cpp with CUDA (once per
# machine, into /tmp/llama-build), then run gpu_plan_check.py with the given cases.
# Needs .gpu/ (git-ignored): llama.cpp.tar.gz (llama-cpp-python's vendor/llama.cpp,
# trimmed), py/llama_cpp (its Python files), whl/ (pure-Python wheels kvchat needs).
set -euo pipefail
. benchmarks/gpu_setup.sh
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
python3 benchmarks/gpu_plan_check.py --out "$OUT" "$@"
