#!/usr/bin/env bash
# Anchor for `kvchat quality`: llama.cpp's own llama-perplexity, built from the source
# vendored in the pinned llama-cpp-python (0.3.36), scores the same files on the same
# text, and the two sets of figures are compared.
#
#   benchmarks/quality_anchor.sh build              # build llama-perplexity only
#   benchmarks/quality_anchor.sh REF.gguf CAND.gguf... [--ctx N] [--text FILE] [--json PATH]
#
# The build goes to .artifacts/llama.cpp (ignored by git). Run the comparison under the
# model lock: flock /tmp/kv/model.lock benchmarks/quality_anchor.sh ...
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="$ROOT/.venv/bin/python"
VERSION=0.3.36
WORK="$ROOT/.artifacts/llama.cpp"
SRC="$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp"
BIN="$SRC/build/bin/llama-perplexity"

build() {
  if [[ -x "$BIN" ]]; then return; fi
  mkdir -p "$WORK"
  if [[ ! -d "$SRC" ]]; then
    "$ROOT/.venv/bin/pip" download --no-deps --no-binary :all: \
      "llama-cpp-python==$VERSION" -d "$WORK" >&2
    tar -xzf "$WORK/llama_cpp_python-$VERSION.tar.gz" -C "$WORK"
  fi
  # The flags of a portable x86-64 build with AVX2, as llama-cpp-python's wheel here.
  (cd "$SRC" && cmake -B build -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON \
      -DGGML_F16C=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
      -DLLAMA_BUILD_SERVER=OFF >&2)
  # Two shared cores: the build must not starve the machine's other work.
  (cd "$SRC" && nice -n 19 cmake --build build -j2 --target llama-perplexity >&2)
}

build
if [[ "${1:-}" == "build" || $# -eq 0 ]]; then
  echo "$BIN"
  exit 0
fi
exec "$PY" "$ROOT/benchmarks/quality_anchor.py" --perplexity "$BIN" "$@"
