#!/usr/bin/env bash
# On the GPU machine, from the repository root: build llama.cpp with CUDA and its
# llama-bench (once per machine, into /tmp/llama-build), then measure the given shapes
# with kvchat bench's code (benchmarks/gpu_bench.py). Needs .gpu/ (git-ignored):
# llama.cpp.tar.gz (llama-cpp-python's vendor/llama.cpp, trimmed), py/llama_cpp (its
# Python files), whl/ (pure-Python wheels kvchat needs). Usage:
#   OUT=dir benchmarks/gpu_bench.sh --deadline SECONDS CASE...   (CASE: SHAPE:QUANT[@LAYERS])
set -euo pipefail
ROOT=$(pwd)
B=/tmp/llama-build
OUT=${OUT:-$ROOT/.gpu/out}
mkdir -p "$OUT" "$B"
if [ ! -d /tmp/site/pydantic ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .gpu/whl/*.whl
fi
if [ ! -x "$B/llama.cpp/build/bin/llama-bench" ]; then
  tar xzf .gpu/llama.cpp.tar.gz -C "$B"
  (cd "$B/llama.cpp" && \
   cmake -B build -G Ninja -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DBUILD_SHARED_LIBS=ON \
     -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
     -DLLAMA_BUILD_TOOLS=ON -DLLAMA_CURL=OFF -DGGML_NATIVE=OFF -DGGML_CUDA_NCCL=OFF \
     -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
     > "$OUT/build.log" 2>&1 && \
   time cmake --build build -j16 --target llama-bench llama >> "$OUT/build.log" 2>&1) \
   || { tail -40 "$OUT/build.log"; exit 1; }
fi
export LLAMA_CPP_LIB_PATH="$B/llama.cpp/build/bin"
export PYTHONPATH="/tmp/site:$ROOT/.gpu/py:$ROOT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
# TOTAL: seconds this whole script may take; what the build left goes to the cases.
python3 benchmarks/gpu_bench.py --out "$OUT" --llama-bench "$B/llama.cpp/build/bin/llama-bench" \
  --deadline $(( ${TOTAL:-580} - SECONDS )) "$@"
