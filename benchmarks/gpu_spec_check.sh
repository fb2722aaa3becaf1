#!/usr/bin/env bash
# On the GPU machine, from the repository root: is greedy output with speculation
# identical to plain greedy there? Builds llama.cpp with CUDA (as gpu_bench.sh does),
# writes synthetic shapes, then runs spec_identity.py with the model drafting for
# itself. (batch_invariance.py, which reads raw logits rows through llama.cpp's C API,
# crashes in a CUDA build before printing; the engine-level check is what ran.)
# Needs .gpu/ (git-ignored; see gpu_bench.sh). Usage: OUT=dir benchmarks/gpu_spec_check.sh
set -euo pipefail
ROOT=$(pwd)
B=/tmp/llama-build
OUT=${OUT:-$ROOT/.gpu/out}
M=/tmp/synth
mkdir -p "$OUT" "$B" "$M"
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
for shape in gemma-3-270m llama-3.1-8b; do
  [ -f "$M/$shape-Q4_K_M.gguf" ] || python3 -c "import sys
from engine.shapes import parse_shape
from engine.synth import write_synthetic
shape, mix = parse_shape(sys.argv[1])
write_synthetic(shape, mix, sys.argv[2])" "$shape:Q4_K_M" "$M/$shape-Q4_K_M.gguf"
done
echo "== greedy identity, self-drafting, llama-3.1-8b shape"
python3 benchmarks/spec_identity.py "$M/llama-3.1-8b-Q4_K_M.gguf" --gpu-layers 999 --drafter self \
  --tokens 160 --out "$OUT/identity_8b_self.json" 2>&1 | grep '^{' | tail -5
echo "== greedy identity, self-drafting, gemma-3-270m shape"
python3 benchmarks/spec_identity.py "$M/gemma-3-270m-Q4_K_M.gguf" --gpu-layers 999 --drafter self \
  --tokens 160 --out "$OUT/identity_270m_self.json" 2>&1 | grep '^{' | tail -5
