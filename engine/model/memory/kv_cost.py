"""Memory arithmetic from a GGUF header: what the KV cache costs per token.

The full planner (GPU/CPU layer split against a budget) builds on these figures.
"""

from __future__ import annotations

from engine.model.gguf_checks import layer_index
from engine.model.gguf_header import GGUFHeader

KV_TYPE_BYTES: dict[str, float] = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
"""Bytes per element of each KV cache type (q8_0: 32 values in 34 bytes)."""


def _per_layer(value: object, n_layers: int) -> list[int]:
    # Some architectures store a per-layer array (e.g. head_count_kv varying by layer);
    # the header reader has checked it holds one count per layer.
    if isinstance(value, list):
        return [int(v) for v in value]
    return [value if isinstance(value, int) else 0] * n_layers


def kv_bytes_per_token(header: GGUFHeader, kv_type: str = "f16") -> int:
    """Bytes of K and V one token occupies across all layers.

    Per layer: n_head_kv x (key_length + value_length) elements. Gemma 3's
    sliding-window layers are counted in full because llama.cpp allocates them at
    full context size (``swa_full``).
    """
    return sum(kv_bytes_per_layer(header, kv_type))


def weights_by_layer(header: GGUFHeader) -> tuple[list[int], int]:
    """Bytes of each repeating block's tensors (``blk.N.*``), and of everything else
    (token embeddings, output head, final norm)."""
    per_layer = [0] * header.n_layers
    other = 0
    for tensor in header.tensors:
        layer = layer_index(tensor.name)
        if layer is not None and layer < len(per_layer):
            per_layer[layer] += tensor.n_bytes
        else:
            other += tensor.n_bytes
    return per_layer, other


def kv_bytes_per_layer(header: GGUFHeader, kv_type: str = "f16") -> list[int]:
    """KV bytes one token occupies in each layer (K and V), as llama.cpp sizes the rows
    (``ggml_row_size``: whole 32-value blocks for q8_0 / q4_0)."""
    n_layers = header.n_layers
    n_head = header.arch_int("attention.head_count")
    n_embd = header.arch_int("embedding_length")
    head_dim = n_embd // n_head if n_head else 0
    key_len = header.arch_int("attention.key_length") or head_dim
    value_len = header.arch_int("attention.value_length") or head_dim
    kv_heads = _per_layer(header.arch_value("attention.head_count_kv", n_head), n_layers)
    return [int(h * (key_len + value_len) * KV_TYPE_BYTES[kv_type]) for h in kv_heads]


# CPU weight types llama.cpp repacks into interleaved blocks at load (x86 AVX2 / Arm),
# in a separate CPU_REPACK buffer beside the mapped file.
REPACKED_TYPES = frozenset({"Q4_0", "Q4_K", "IQ4_NL"})


def repacked_bytes(header: GGUFHeader, cpu_layers: set[int], output_on_cpu: bool) -> int:
    """Bytes of the weights the CPU backend copies into its repack buffer: matrix
    weights of the types above whose row count is a multiple of 8, in layers that run
    on the CPU. The token embeddings are only looked up (get_rows), never repacked."""
    total = 0
    for t in header.tensors:
        if t.type_name not in REPACKED_TYPES or len(t.shape) != 2 or t.shape[1] % 8:
            continue
        layer = layer_index(t.name)
        if layer is None:
            if t.name == "output.weight" and output_on_cpu:
                total += t.n_bytes
        elif layer in cpu_layers:
            total += t.n_bytes
    return total


def pad_ctx(n_ctx: int) -> int:
    """llama.cpp rounds the context up to a multiple of 256 cells."""
    return -(-n_ctx // 256) * 256
