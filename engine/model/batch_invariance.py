"""Loading llama.cpp so that a row of a small batch equals a one-token decode, bit for bit.

Speculative verification decodes the pending token and its drafts as one batch. Greedy
output with speculation is the plain greedy output exactly when every row of that batch
carries the numbers a one-token decode of the same position would, and writes the same
K/V. llama.cpp's CPU backend picks kernels by batch shape, so by default it does not:

- attention over an f16/f32 cache: a one-token decode splits the KV range across
  threads once it spans 512 cells and merges partial softmaxes; a batch of fewer than
  64 rows runs each row over the whole range (ggml-cpu ops.cpp, flash_attn_ext). With a
  quantized cache both run the same whole-range kernel;
- repacked weights (``use_extra_bufts``): Q4_K rows are re-laid for a GEMM that only
  batches of 4 or more take;
- the tiled K-quant matmul (ggml-cpu tiled.cpp) takes batches of 8 rows or more.

So an invariant load uses a q8_0 cache with flash attention and no repacked layouts,
and either switches the tiled matmul off (``GGML_CPU_TILED_MM=0``, which llama.cpp reads
once, at its first matmul in the process: the first load decides) or keeps verification
batches under 8 rows. ``benchmarks/batch_invariance.py``
checks it (every cell "exact"), and a test checks greedy identity under forced
speculation. GPU backends are not covered: CUDA's kernels are chosen by batch width and
round differently (docs/speculative.md).

The price is prompt speed: flash attention over a quantized cache dequantizes V per
query row; on the bundled model and a 2-core CPU prefill ran 0.72x (450 against
630 tokens/s), decoding unchanged.
"""

from __future__ import annotations

import os

from engine.config import ModelConfig
from engine.errors import ConfigError

TILED_MM_ROWS = 7
"""Most invariant rows while llama.cpp's tiled K-quant matmul is on: it takes 8 or more."""
MAX_ROWS = 16
"""Most rows per verification batch otherwise (checked up to 16 rows)."""

_tiled_mm_off: bool | None = None
"""Whether this process's llama.cpp runs with its tiled matmul off; settled by the first
load, since llama.cpp reads the variable once."""

INVARIANT_KV_TYPES = ("q8_0", "q4_0")


def wants_invariance(config: ModelConfig, *, speculating: bool, has_gpu: bool) -> bool:
    """Whether to load ``config`` batch-invariant.

    ``on`` insists (ConfigError where it cannot hold); ``auto`` takes it when
    speculation may run, every layer stays on the CPU, and the KV type is the plan's to
    choose or already quantized; ``off`` never.
    """
    mode = config.batch_invariant
    offloads = has_gpu and config.n_gpu_layers != 0
    if mode == "off":
        return False
    if mode == "on":
        if offloads:
            raise ConfigError("model.batch_invariant on holds on the CPU backend only: set "
                              "model.n_gpu_layers to 0, or batch_invariant to auto")
        if config.kv_type not in ("auto", *INVARIANT_KV_TYPES):
            raise ConfigError(f"model.batch_invariant on needs a quantized KV cache "
                              f"(q8_0 or q4_0), not {config.kv_type}: llama.cpp's CPU "
                              "attention over an f16 cache depends on the batch shape")
        if config.flash_attn is False:
            raise ConfigError("model.batch_invariant on needs flash attention: set "
                              "model.flash_attn to true or leave it empty")
        return True
    return (speculating and not offloads and config.kv_type in ("auto", *INVARIANT_KV_TYPES)
            and config.flash_attn is not False)


def invariant_rows(invariant: bool) -> int:
    """Call before every load: the most rows a verification batch may have and stay
    invariant (0 when ``invariant`` is false). The first load of the process switches
    the tiled matmul off if it is invariant and the environment leaves it unset; it
    costs about 4% of prompt speed, and lets verification batches grow to 16 rows."""
    global _tiled_mm_off
    if _tiled_mm_off is None:
        if invariant:
            os.environ.setdefault("GGML_CPU_TILED_MM", "0")
        _tiled_mm_off = os.environ.get("GGML_CPU_TILED_MM") == "0"
    if not invariant:
        return 0
    return MAX_ROWS if _tiled_mm_off else TILED_MM_ROWS


def invariant_config(config: ModelConfig) -> ModelConfig:
    """``config`` with what invariance needs: a q8_0 cache unless q4_0 was asked for,
    and flash attention (a quantized V cache needs it)."""
    kv_type = config.kv_type if config.kv_type in INVARIANT_KV_TYPES else "q8_0"
    return config.model_copy(update={"kv_type": kv_type, "flash_attn": True})
