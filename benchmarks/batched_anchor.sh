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
# -t 2 -fa on); --output-format jsonl is added. The build: llama_tool.sh. Run under the
# model lock:
#   flock /tmp/kv/model.lock benchmarks/batched_anchor.sh MODEL.gguf ...
set -euo pipefail
BIN="$("$(dirname "$0")/llama_tool.sh" llama-batched-bench)"
if [[ "${1:-}" == "build" || $# -eq 0 ]]; then
  echo "$BIN"
  exit 0
fi
model="$1"
shift
# jsonl rows go to the log stream with the model's load messages; keep the rows only.
"$BIN" -m "$model" "$@" --output-format jsonl 2>&1 | grep '^{"n_kv_max"'
