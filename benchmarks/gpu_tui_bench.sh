#!/usr/bin/env bash
# On the GPU machine, from the repository root: the app against `kvchat ask` while a
# reply streams (benchmarks/tui_streaming.py), where decoding does not need the CPU
# cores the app's screen updates use. Needs .gpu/ filled by
# `benchmarks/gpu_pack.sh --model --tui` (the app's packages), the bundled GGUF
# appended to $MODEL over consecutive calls (see gpu_spec_bench.sh), and builds
# llama.cpp with CUDA first when the machine has no build yet. Also measures the
# 8B shape (synthesized there); with CPU_ONLY=1 only the bundled model on the host's
# CPU cores instead. Usage:
#   MODEL=/tmp/model/g.gguf OUT=dir [CPU_ONLY=1 [THREAD_COMPARE=1] [VERIFY_COMPARE=1]
#     [THREADS=n] [CORES=n]] \
#     benchmarks/gpu_tui_bench.sh
set -euo pipefail
# Each run's whole output (a face's traceback too) is kept in $OUT/*.log.
. benchmarks/gpu_setup.sh
: "${MODEL:?set MODEL to the bundled GGUF on this machine}"
echo "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818  $MODEL" | sha256sum -c
python3 -c "import linkify_it, textual" || { echo "the app's packages are missing: gpu_pack.sh --tui"; exit 1; }
if [ -n "${CPU_ONLY:-}" ]; then
  # The host's CPU cores alone (CUDA hidden): a many-core CPU, where the screen does not
  # take the decode's cores as on a 2-core VM.
  name=tui_bundled_cpu${THREADS:+_threads$THREADS}${CORES:+_cores$CORES}
  # CORES=n: both faces on the first n cores only (taskset), as on a smaller CPU.
  CUDA_VISIBLE_DEVICES= ${CORES:+taskset -c 0-$((CORES - 1))} \
    python3 benchmarks/tui_streaming.py --model "$MODEL" --gpu-layers 0 \
    --reps "${REPS:-3}" --tokens 1000 --ctx 4096 --skip-long \
    ${THREAD_COMPARE:+--thread-compare} ${VERIFY_COMPARE:+--verify-compare} \
    ${THREADS:+--threads "$THREADS"} --face-timeout 200 --json "$OUT/$name.json" 2>&1 \
    | tee "$OUT/$name.log" | grep -E '^rep|^app / ask|over_ask' -A4
  exit 0
fi
python3 benchmarks/tui_streaming.py --model "$MODEL" --reps "${REPS:-3}" --tokens 2000 \
  --ctx 4096 --skip-long --thread-compare --face-timeout 120 --json "$OUT/tui_bundled_gpu.json" 2>&1 | tee "$OUT/tui_bundled_gpu.log" | grep -E '^rep|^app / ask|over_ask' -A3
S=/tmp/synth/llama-3.1-8b-Q4_K_M.gguf
mkdir -p /tmp/synth
[ -f "$S" ] || python3 -c "import sys
from engine.model.memory.shapes import parse_shape
from engine.model.memory.synth import write_synthetic
shape, mix = parse_shape('llama-3.1-8b:Q4_K_M')
write_synthetic(shape, mix, sys.argv[1])" "$S"
python3 benchmarks/tui_streaming.py --model "$S" --reps "${REPS:-3}" --tokens 1000 \
  --ctx 4096 --skip-long --thread-compare --face-timeout 120 --json "$OUT/tui_8b_gpu.json" 2>&1 | tee "$OUT/tui_8b_gpu.log" | grep -E '^rep|^app / ask|over_ask' -A3
