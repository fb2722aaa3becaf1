#!/usr/bin/env bash
# Anchor for `kvchat bench --parallel`: llama.cpp's own llama-batched-bench, built from
# the source vendored in the pinned llama-cpp-python (0.3.36), decodes N sequences in
# one context (N prompts of -npp tokens, then -ntg steps of N tokens each) and reports
# the aggregate rates. kvchat's parallel bench runs the same model and sizes.
#
#   benchmarks/batched_anchor.sh build                    # build llama-batched-bench only
#   benchmarks/batched_anchor.sh MODEL.gguf [ARGS...]     # run it, one JSON line per N
#
# ARGS go to llama-batched-bench as they are (e.g. -c 4096 -npp 128 -ntg 32 -npl 1,2,4,8
# -t 2 -fa on); --output-format jsonl is added. The build shares .artifacts/llama.cpp (ignored
# by git) with quality_anchor.sh and is incremental. Run under the model lock:
#   flock /tmp/kv/model.lock benchmarks/batched_anchor.sh MODEL.gguf ...
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VERSION=0.3.36
WORK="$ROOT/.artifacts/llama.cpp"
SRC="$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp"
BIN="$SRC/build/bin/llama-batched-bench"

build() {
  if [[ -x "$BIN" ]]; then return; fi
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
  (cd "$SRC" && nice -n 19 cmake --build build -j2 --target llama-batched-bench >&2)
}

build
if [[ "${1:-}" == "build" || $# -eq 0 ]]; then
  echo "$BIN"
  exit 0
fi
model="$1"
shift
# jsonl rows go to the log stream with the model's load messages; keep the rows only.
"$BIN" -m "$model" "$@" --output-format jsonl 2>&1 | grep '^{"n_kv_max"'
