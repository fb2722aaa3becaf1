#!/usr/bin/env bash
# On the GPU machine, from the repository root: is greedy output with speculation
# identical to plain greedy there? Builds llama.cpp with CUDA (as gpu_bench.sh does),
# writes synthetic shapes, then runs spec_identity.py with the model drafting for
# itself. (batch_invariance.py, which reads raw logits rows through llama.cpp's C API,
# crashes in a CUDA build before printing; the engine-level check is what ran.)
# Needs .gpu/ (git-ignored; see gpu_bench.sh). Usage: OUT=dir benchmarks/gpu_spec_check.sh
set -euo pipefail
. benchmarks/gpu_setup.sh
M=/tmp/synth
mkdir -p "$M"
for shape in gemma-3-270m llama-3.1-8b; do
  [ -f "$M/$shape-Q4_K_M.gguf" ] || python3 -c "import sys
from engine.model.memory.shapes import parse_shape
from engine.model.memory.synth import write_synthetic
shape, mix = parse_shape(sys.argv[1])
write_synthetic(shape, mix, sys.argv[2])" "$shape:Q4_K_M" "$M/$shape-Q4_K_M.gguf"
done
echo "== greedy identity, self-drafting, llama-3.1-8b shape"
python3 benchmarks/spec_identity.py "$M/llama-3.1-8b-Q4_K_M.gguf" --gpu-layers 999 --drafter self \
  --tokens 160 --out "$OUT/identity_8b_self.json" 2>&1 | grep '^{' | tail -5
echo "== greedy identity, self-drafting, gemma-3-270m shape"
python3 benchmarks/spec_identity.py "$M/gemma-3-270m-Q4_K_M.gguf" --gpu-layers 999 --drafter self \
  --tokens 160 --out "$OUT/identity_270m_self.json" 2>&1 | grep '^{' | tail -5
