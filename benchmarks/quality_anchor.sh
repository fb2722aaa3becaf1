#!/usr/bin/env bash
# Anchor for `kvchat quality`: llama.cpp's own llama-perplexity, built from the source
# vendored in the pinned llama-cpp-python (0.3.36), scores the same files on the same
# text, and the two sets of figures are compared.
#
#   benchmarks/quality_anchor.sh build              # build llama-perplexity only
#   benchmarks/quality_anchor.sh REF.gguf CAND.gguf... [--ctx N] [--text FILE] [--json PATH]
#
# The build: llama_tool.sh, into .artifacts/llama.cpp. Run the comparison under the
# model lock: flock /tmp/kv/model.lock benchmarks/quality_anchor.sh ...
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="$ROOT/.venv/bin/python"
BIN="$("$ROOT/benchmarks/llama_tool.sh" llama-perplexity)"
if [[ "${1:-}" == "build" || $# -eq 0 ]]; then
  echo "$BIN"
  exit 0
fi
exec "$PY" "$ROOT/benchmarks/quality_anchor.py" --perplexity "$BIN" "$@"
