"""Are llama.cpp's logits for a position the same whether it is decoded alone or as
one row of a batch? Speculative verification decodes drafts in batches, so greedy
output with speculation equals plain greedy output only where they are.

For each start position and batch size, decodes the same tokens one at a time and as
one batch (fresh cache each time) and prints the largest logit difference per row.

    python benchmarks/batch_invariance.py [MODEL.gguf] [--gpu-layers N]
        [--bases 40,100,300] [--sizes 2,3,4,5,8,13] [--flash-attn on|off|auto]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    import llama_cpp
    from llama_cpp import _internals

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?")
    parser.add_argument("--gpu-layers", type=int, default=0)
    parser.add_argument("--bases", default="40,100,300")
    parser.add_argument("--sizes", default="2,3,4,5,8,13")
    parser.add_argument("--flash-attn", choices=["on", "off", "auto"], default="auto")
    parser.add_argument("--no-repack", action="store_true",
                        help="load without llama.cpp's repacked CPU weight layouts")
    parser.add_argument("--kv-type", default="f16",
                        help="f16, f32, q8_0, or K+V types such as f16+q8_0")
    args = parser.parse_args()
    path = args.model
    if path is None:
        from engine.model.bundled import bundled_model_path

        path = str(bundled_model_path("gemma3-270m"))
    bases = [int(b) for b in args.bases.split(",")]
    sizes = [int(s) for s in args.sizes.split(",")]

    llama_cpp.llama_backend_init()  # registers the GPU backends; without it CUDA builds crash
    mp = llama_cpp.llama_model_default_params()
    mp.n_gpu_layers = args.gpu_layers
    mp.use_extra_bufts = not args.no_repack
    model = _internals.LlamaModel(path_model=path, params=mp, verbose=False)
    cp = llama_cpp.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch = 2048, 512, 512
    cp.flash_attn_type = {"on": 1, "off": 0, "auto": -1}[args.flash_attn]
    kv_types = {"f16": llama_cpp.GGML_TYPE_F16, "f32": llama_cpp.GGML_TYPE_F32,
                "q8_0": llama_cpp.GGML_TYPE_Q8_0}
    k_type, v_type = (args.kv_type.split("+") * 2)[:2]
    cp.type_k, cp.type_v = kv_types[k_type], kv_types[v_type]
    ctx = _internals.LlamaContext(model=model, params=cp, verbose=False)
    batch = _internals.LlamaBatch(n_tokens=512, embd=0, n_seq_max=1)
    n_vocab = model.n_vocab()
    text = (ROOT / "engine" / "decode" / "kv_window.py").read_text() * 4
    tokens = model.tokenize(text.encode(), add_bos=True, special=False)
    need = max(bases) + max(sizes)
    if len(tokens) < need:
        tokens = (tokens * (need // len(tokens) + 1))[:need]

    def row(i: int) -> np.ndarray:
        ptr = llama_cpp.llama_get_logits_ith(ctx.ctx, i)
        return np.ctypeslib.as_array(ptr, shape=(n_vocab,)).copy()

    def prefill(base: int) -> None:
        ctx.kv_cache_clear()
        for pos in range(0, base, 512):
            chunk = tokens[pos:min(base, pos + 512)]
            batch.set_batch(chunk, n_past=pos, logits_all=False)
            ctx.decode(batch)

    print(f"model {Path(path).name}, gpu layers {args.gpu_layers}, flash attn "
          f"{args.flash_attn}; cells: max |batched - one-token| logit over the batch's rows")
    print("base  " + "  ".join(f"{f'b={s}':>8}" for s in sizes))
    for base in bases:
        prefill(base)
        single = []
        for j in range(max(sizes)):
            batch.set_batch([tokens[base + j]], n_past=base + j, logits_all=False)
            ctx.decode(batch)
            single.append(row(-1))
        cells = []
        for size in sizes:
            prefill(base)
            batch.set_batch(tokens[base:base + size], n_past=base, logits_all=True)
            ctx.decode(batch)
            diff = max(float(np.abs(row(i) - single[i]).max()) for i in range(size))
            cells.append("exact" if diff == 0 else f"{diff:.3g}")
        print(f"{base:<5} " + "  ".join(f"{c:>8}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
