#!/usr/bin/env bash
# Builds one of llama.cpp's own tools from the source vendored in the pinned
# llama-cpp-python (0.3.36), for the anchors (batched_anchor.sh, quality_anchor.sh),
# into .artifacts/llama.cpp (ignored by git); incremental, and a tool already built is
# left as it is. Prints the binary's path.
#
#   benchmarks/llama_tool.sh llama-batched-bench
set -euo pipefail
TARGET="$1"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VERSION=0.3.36
WORK="$ROOT/.artifacts/llama.cpp"
SRC="$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp"
BIN="$SRC/build/bin/$TARGET"

if [[ ! -x "$BIN" ]]; then
  mkdir -p "$WORK"
  if [[ ! -d "$SRC" ]]; then
    "$ROOT/.venv/bin/pip" download --no-deps --no-binary :all: \
      "llama-cpp-python==$VERSION" -d "$WORK" >&2
    tar -xzf "$WORK/llama_cpp_python-$VERSION.tar.gz" -C "$WORK"
  fi
  if [[ ! -f "$SRC/build/CMakeCache.txt" ]]; then
    # The flags of a portable x86-64 build with AVX2, as llama-cpp-python's wheel here.
    (cd "$SRC" && cmake -B build -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON \
        -DGGML_F16C=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_SERVER=OFF >&2)
  fi
  # Two shared cores: the build must not starve the machine's other work.
  (cd "$SRC" && nice -n 19 cmake --build build -j2 --target "$TARGET" >&2)
fi
echo "$BIN"
