# Sourced by the GPU scripts (gpu_bench.sh, gpu_parallel.sh, gpu_plan_check.sh,
# gpu_spec_check.sh), from the repository root on the GPU machine: installs the carried
# wheels into /tmp/site, builds llama.cpp with CUDA, llama-bench and llama-batched-bench
# once per machine into /tmp/llama-build, and points llama-cpp-python's Python files at
# those libraries. Needs .gpu/ (git-ignored):
# llama.cpp.tar.gz (llama-cpp-python's vendor/llama.cpp, trimmed), py/llama_cpp (its
# Python files), whl/ (pure-Python wheels kvchat needs). Sets ROOT, B, OUT.
ROOT=$(pwd)
B=/tmp/llama-build
OUT=${OUT:-$ROOT/.gpu/out}
mkdir -p "$OUT" "$B"
if [ ! -d /tmp/site/pydantic ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .gpu/whl/*.whl
fi
if [ ! -x "$B/llama.cpp/build/bin/llama-bench" ] || \
   [ ! -x "$B/llama.cpp/build/bin/llama-batched-bench" ]; then
  [ -d "$B/llama.cpp" ] || tar xzf .gpu/llama.cpp.tar.gz -C "$B"
  (cd "$B/llama.cpp" && \
   cmake -B build -G Ninja -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DBUILD_SHARED_LIBS=ON \
     -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
     -DLLAMA_BUILD_TOOLS=ON -DLLAMA_CURL=OFF -DGGML_NATIVE=OFF -DGGML_CUDA_NCCL=OFF \
     -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
     > "$OUT/build.log" 2>&1 && \
   time cmake --build build -j16 --target llama-bench llama-batched-bench llama \
     >> "$OUT/build.log" 2>&1) \
   || { tail -40 "$OUT/build.log"; exit 1; }
fi
export LLAMA_CPP_LIB_PATH="$B/llama.cpp/build/bin"
export PYTHONPATH="/tmp/site:$ROOT/.gpu/py:$ROOT"
export PYTHONUNBUFFERED=1
