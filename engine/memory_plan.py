"""Memory arithmetic from a GGUF header: what the KV cache costs per token.

The full planner (GPU/CPU layer split against a budget) builds on these figures.
"""

from __future__ import annotations

from engine.gguf_header import GGUFHeader

KV_TYPE_BYTES: dict[str, float] = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
"""Bytes per element of each KV cache type (q8_0: 32 values in 34 bytes)."""


def _per_layer(value: object, n_layers: int) -> list[int]:
    # Some architectures store a per-layer array (e.g. head_count_kv varying by layer).
    if isinstance(value, list):
        return [int(v) for v in value]
    return [int(value or 0)] * n_layers


def kv_bytes_per_token(header: GGUFHeader, kv_type: str = "f16") -> int:
    """Bytes of K and V one token occupies across all layers.

    Per layer: n_head_kv x (key_length + value_length) elements. Gemma 3's
    sliding-window layers are counted in full because llama.cpp allocates them at
    full context size (``swa_full``).
    """
    n_layers = header.n_layers
    n_head = int(header.arch_value("attention.head_count", 0) or 0)
    n_embd = int(header.arch_value("embedding_length", 0) or 0)
    head_dim = n_embd // n_head if n_head else 0
    key_len = int(header.arch_value("attention.key_length", head_dim) or head_dim)
    value_len = int(header.arch_value("attention.value_length", head_dim) or head_dim)
    kv_heads = _per_layer(header.arch_value("attention.head_count_kv", n_head), n_layers)
    elements = sum(h * (key_len + value_len) for h in kv_heads)
    return int(elements * KV_TYPE_BYTES[kv_type])
