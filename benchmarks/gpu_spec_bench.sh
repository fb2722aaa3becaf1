#!/usr/bin/env bash
# On the GPU machine, from the repository root: speculative decoding against plain
# decoding on the bundled Gemma 3 270M with every layer on the GPU, where batched
# verification is measured identical to one-token decoding (docs/speculative.md).
# Builds llama.cpp with CUDA first, as gpu_bench.sh does. The GGUF (253 MB) is larger
# than what travels to that machine in one call: send it in pieces
# (benchmarks/gpu_pack.sh --model) and append them to $MODEL in consecutive calls,
# while the machine stays warm.
# Usage: MODEL=/tmp/model/gemma-3-270m-q4_k_m.gguf OUT=dir benchmarks/gpu_spec_bench.sh
set -euo pipefail
. benchmarks/gpu_setup.sh
: "${MODEL:?set MODEL to the bundled GGUF on this machine}"
echo "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818  $MODEL" | sha256sum -c
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
python3 benchmarks/speculative.py --model "$MODEL" --gpu-layers 999 --tokens "${TOKENS:-400}" \
  --reps "${REPS:-3}" --json "$OUT/spec_bundled_gpu.json"
