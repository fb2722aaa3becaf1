"""Built-in model shapes: the tensor list a real GGUF of that architecture and quant has.

``kvchat plan --shape llama-3.1-70b:Q4_K_M`` plans a model that is not on disk, and
``kvchat synth`` writes one; both read the tensor list from here, so they cannot
disagree. A shape becomes a :class:`~engine.model.gguf_header.GGUFHeader` (metadata and
tensors as the header reader would return them), so the planner has one input type.

Per-tensor types follow llama.cpp's quantizer (``llama_tensor_get_type`` in
``src/llama-quant.cpp``) for a converted F16 model without an importance matrix:

- 1-D tensors (norms, ``rope_freqs``) stay F32; 2-D weights start at the mix's type
  (Q4_K for Q4_K_M, Q5_K for Q5_K_M, ...).
- ``output.weight`` (and ``token_embd.weight`` when the embeddings are tied, as in
  Gemma) becomes Q6_K, or Q8_0 when its row length is not a multiple of the mix's
  block size or the mix is Q8_0.
- ``attn_v``: Q4_K_M/Q5_K_M use Q6_K on the "more bits" layers (the first and last
  eighth, and every third layer between); Q4_K_S uses Q5_K on the first 4; Q3_K_M Q5_K
  on the first 2, else Q4_K; Q2_K Q4_K (GQA >= 4) or Q3_K. A 70B llama then bumps a
  remaining Q3_K/Q4_K attn_v to Q5_K.
- ``ffn_down``: Q4_K_M/Q5_K_M use Q6_K on the "more bits" layers; Q4_K_S Q5_K on the
  first eighth; Q3_K_M Q5_K on the first sixteenth, else Q4_K; Q2_K uses Q3_K.
- ``attn_output``: Q3_K_M uses Q4_K, Q2_K uses Q3_K.
- A row length that is not a whole number of blocks falls back: Q4_K -> Q5_0,
  Q5_K -> Q5_1, Q6_K -> Q8_0, Q2_K/Q3_K -> Q4_0 (Gemma 3 270M's 640-wide rows).

The bundled Gemma 3 270M Q4_K_M matches this list tensor for tensor (tested).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from engine.errors import ConfigError
from engine.model.gguf_header import ArraySummary, GGUFHeader, TensorInfo

Q = GGMLQuantizationType


@dataclass(frozen=True)
class Shape:
    """Hyperparameters of one architecture size, as its GGUF metadata states them."""

    name: str
    architecture: str
    """GGUF architecture string: ``llama`` or ``gemma3``."""
    description: str
    n_layers: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_vocab: int
    n_ctx_train: int
    rope_freq_base: float
    rms_eps: float
    tied_embeddings: bool = False
    """No ``output.weight``: the output layer reuses the token embeddings."""
    rope_freqs: bool = False
    """Llama 3.1's long-context RoPE factors, stored as a small F32 tensor."""
    sliding_window: int = 0
    """Gemma 3: local-attention window of its sliding-window layers."""


SHAPES: dict[str, Shape] = {s.name: s for s in (
    Shape("llama-3.1-8b", "llama", "Llama 3.1 8B", 32, 4096, 14336, 32, 8, 128, 128256,
          131072, 500000.0, 1e-5, rope_freqs=True),
    Shape("llama-3.1-70b", "llama", "Llama 3.1 70B", 80, 8192, 28672, 64, 8, 128, 128256,
          131072, 500000.0, 1e-5, rope_freqs=True),
    Shape("llama-3.2-1b", "llama", "Llama 3.2 1B", 16, 2048, 8192, 32, 8, 64, 128256,
          131072, 500000.0, 1e-5, tied_embeddings=True, rope_freqs=True),
    Shape("llama-3.2-3b", "llama", "Llama 3.2 3B", 28, 3072, 8192, 24, 8, 128, 128256,
          131072, 500000.0, 1e-5, tied_embeddings=True, rope_freqs=True),
    Shape("llama-2-7b", "llama", "Llama 2 7B", 32, 4096, 11008, 32, 32, 128, 32000,
          4096, 10000.0, 1e-5),
    Shape("llama-2-13b", "llama", "Llama 2 13B", 40, 5120, 13824, 40, 40, 128, 32000,
          4096, 10000.0, 1e-5),
    Shape("gemma-3-270m", "gemma3", "Gemma 3 270M", 18, 640, 2048, 4, 1, 256, 262144,
          32768, 1000000.0, 1e-6, tied_embeddings=True, sliding_window=512),
    # A llama small enough to write and run in a test (a few MB).
    Shape("tiny-llama", "llama", "tiny llama (test shape)", 4, 512, 1024, 8, 4, 64, 4096,
          4096, 10000.0, 1e-5),
)}


@dataclass(frozen=True)
class QuantMix:
    name: str
    file_type: int
    """``general.file_type``: llama.cpp's ``llama_ftype`` value."""
    base: GGMLQuantizationType


QUANTS: dict[str, QuantMix] = {q.name: q for q in (
    QuantMix("F16", 1, Q.F16),
    QuantMix("Q8_0", 7, Q.Q8_0),
    QuantMix("Q6_K", 18, Q.Q6_K),
    QuantMix("Q5_K_M", 17, Q.Q5_K),
    QuantMix("Q4_K_M", 15, Q.Q4_K),
    QuantMix("Q4_K_S", 14, Q.Q4_K),
    QuantMix("Q4_0", 2, Q.Q4_0),
    QuantMix("Q3_K_M", 12, Q.Q3_K),
    QuantMix("Q2_K", 10, Q.Q2_K),
)}
"""Quant mixes, largest first."""

_FALLBACK = {Q.Q4_K: Q.Q5_0, Q.Q5_K: Q.Q5_1, Q.Q6_K: Q.Q8_0, Q.Q2_K: Q.Q4_0, Q.Q3_K: Q.Q4_0}
_UNQUANTIZED = {Q.F16, Q.F32, Q.BF16}


def parse_shape(spec: str) -> tuple[Shape, QuantMix]:
    """``NAME:QUANT`` (e.g. ``llama-3.1-70b:Q4_K_M``) -> shape and mix; ConfigError if
    either is unknown, naming the choices."""
    name, sep, quant = spec.strip().partition(":")
    shape = SHAPES.get(name.strip().lower())
    if shape is None:
        raise ConfigError(f"unknown shape {name!r} (choose from {', '.join(SHAPES)})")
    if not sep or not quant.strip():
        raise ConfigError(f"shape {spec!r} needs a quant type, e.g. {name}:Q4_K_M "
                          f"(choose from {', '.join(QUANTS)})")
    mix = QUANTS.get(quant.strip().upper())
    if mix is None:
        raise ConfigError(f"unknown quant type {quant!r} (choose from {', '.join(QUANTS)})")
    return shape, mix


def _more_bits(i: int, n: int) -> bool:
    # llama.cpp's use_more_bits: first and last eighth, and every third layer between.
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _block(t: GGMLQuantizationType) -> int:
    return GGML_QUANT_SIZES[t][0]


def tensor_type(shape: Shape, mix: QuantMix, role: str, ne0: int, layer: int) -> Q:
    """The ggml type llama.cpp's quantizer gives a 2-D weight of ``role`` (``output``,
    ``token_embd``, ``attn_v``, ``ffn_down``, ...) in ``layer`` for this mix."""
    base = mix.base
    if base in _UNQUANTIZED:
        return base
    n = shape.n_layers
    t = base
    if role == "output" or (role == "token_embd" and shape.tied_embeddings):
        t = Q.Q8_0 if ne0 % _block(base) or base == Q.Q8_0 else Q.Q6_K
    elif role == "attn_v":
        if mix.name == "Q2_K":
            t = Q.Q4_K if shape.n_head // shape.n_head_kv >= 4 else Q.Q3_K
        elif mix.name == "Q3_K_M":
            t = Q.Q5_K if layer < 2 else Q.Q4_K
        elif mix.name in ("Q4_K_M", "Q5_K_M") and _more_bits(layer, n):
            t = Q.Q6_K
        elif mix.name == "Q4_K_S" and layer < 4:
            t = Q.Q5_K
        if _is_llama_70b(shape) and t in (Q.Q3_K, Q.Q4_K):
            t = Q.Q5_K
    elif role == "ffn_down":
        if mix.name == "Q2_K":
            t = Q.Q3_K
        elif mix.name == "Q3_K_M":
            t = Q.Q5_K if layer < n // 16 else Q.Q4_K
        elif mix.name in ("Q4_K_M", "Q5_K_M") and _more_bits(layer, n):
            t = Q.Q6_K
        elif mix.name == "Q4_K_S" and layer < n // 8:
            t = Q.Q5_K
    elif role == "attn_output":
        t = {"Q2_K": Q.Q3_K, "Q3_K_M": Q.Q4_K}.get(mix.name, t)
    if ne0 % _block(t):
        t = _FALLBACK.get(t, t)
        if ne0 % _block(t):
            t = Q.F16
    return t


def _is_llama_70b(shape: Shape) -> bool:
    # llama.cpp's LLM_TYPE_70B: a llama with 80 layers and grouped-query attention.
    return shape.architecture == "llama" and shape.n_layers == 80 \
        and shape.n_head != shape.n_head_kv


def _n_bytes(t: GGMLQuantizationType, shape: tuple[int, ...]) -> int:
    block, size = GGML_QUANT_SIZES[t]
    n = 1
    for d in shape:
        n *= d
    return n // block * size


def tensor_list(shape: Shape, mix: QuantMix) -> list[tuple[str, tuple[int, ...], Q]]:
    """``(name, ne, type)`` for every tensor, ``ne`` in GGUF order (row length first)."""
    s = shape
    q_dim, kv_dim = s.n_head * s.head_dim, s.n_head_kv * s.head_dim
    tensors: list[tuple[str, tuple[int, ...], Q]] = []

    def weight(name: str, role: str, ne: tuple[int, int], layer: int = 0) -> None:
        tensors.append((name, ne, tensor_type(s, mix, role, ne[0], layer)))

    def norm(name: str, n: int) -> None:
        tensors.append((name, (n,), Q.F32))

    # Input first and output last, as llama.cpp's converter writes a llama: the
    # tensors a partial GPU split keeps on the CPU are then one span of the file.
    if s.rope_freqs:
        norm("rope_freqs.weight", s.head_dim // 2)
    weight("token_embd.weight", "token_embd", (s.n_embd, s.n_vocab))
    for i in range(s.n_layers):
        p = f"blk.{i}."
        norm(p + "attn_norm.weight", s.n_embd)
        weight(p + "attn_q.weight", "attn_q", (s.n_embd, q_dim), i)
        weight(p + "attn_k.weight", "attn_k", (s.n_embd, kv_dim), i)
        weight(p + "attn_v.weight", "attn_v", (s.n_embd, kv_dim), i)
        weight(p + "attn_output.weight", "attn_output", (q_dim, s.n_embd), i)
        if s.architecture == "gemma3":
            norm(p + "attn_q_norm.weight", s.head_dim)
            norm(p + "attn_k_norm.weight", s.head_dim)
            norm(p + "post_attention_norm.weight", s.n_embd)
            norm(p + "post_ffw_norm.weight", s.n_embd)
        norm(p + "ffn_norm.weight", s.n_embd)
        weight(p + "ffn_gate.weight", "ffn_gate", (s.n_embd, s.n_ff), i)
        weight(p + "ffn_up.weight", "ffn_up", (s.n_embd, s.n_ff), i)
        weight(p + "ffn_down.weight", "ffn_down", (s.n_ff, s.n_embd), i)
    norm("output_norm.weight", s.n_embd)
    if not s.tied_embeddings:
        weight("output.weight", "output", (s.n_embd, s.n_vocab))
    return tensors


def shape_for_header(header: GGUFHeader) -> Shape | None:
    """The shape of a real file (llama and gemma3 only), to price other quant mixes of
    the same model; None for other architectures."""
    arch = header.architecture
    if arch not in ("llama", "gemma3"):
        return None
    names = {t.name: t for t in header.tensors}
    embd = names.get("token_embd.weight")
    try:
        n_embd = int(header.arch_value("embedding_length"))
        n_head = int(header.arch_value("attention.head_count"))
        n_head_kv = int(header.arch_value("attention.head_count_kv", n_head))
        head_dim = int(header.arch_value("attention.key_length", n_embd // n_head))
        return Shape(
            name=header.name, architecture=arch, description=header.name,
            n_layers=header.n_layers, n_embd=n_embd,
            n_ff=int(header.arch_value("feed_forward_length")),
            n_head=n_head, n_head_kv=n_head_kv, head_dim=head_dim,
            n_vocab=embd.shape[1] if embd is not None else 32000,
            n_ctx_train=header.n_ctx_train,
            rope_freq_base=float(header.arch_value("rope.freq_base", 10000.0)),
            rms_eps=float(header.arch_value("attention.layer_norm_rms_epsilon", 1e-5)),
            tied_embeddings="output.weight" not in names,
            rope_freqs="rope_freqs.weight" in names,
            sliding_window=int(header.arch_value("attention.sliding_window", 0) or 0))
    except (TypeError, ValueError):  # a per-layer array or a missing key
        return None


def shape_metadata(shape: Shape, mix: QuantMix) -> dict[str, Any]:
    """The GGUF metadata llama.cpp needs for this shape, tokenizer arrays summarized
    (:mod:`engine.model.memory.synth` writes the arrays themselves)."""
    s, a = shape, shape.architecture
    meta: dict[str, Any] = {
        "general.architecture": a,
        "general.name": f"{s.description} {mix.name} (synthetic)",
        "general.file_type": mix.file_type,
        "general.quantization_version": 2,
        f"{a}.context_length": s.n_ctx_train,
        f"{a}.embedding_length": s.n_embd,
        f"{a}.block_count": s.n_layers,
        f"{a}.feed_forward_length": s.n_ff,
        f"{a}.attention.head_count": s.n_head,
        f"{a}.attention.head_count_kv": s.n_head_kv,
        f"{a}.attention.layer_norm_rms_epsilon": s.rms_eps,
        f"{a}.rope.freq_base": s.rope_freq_base,
    }
    if a == "gemma3":
        meta[f"{a}.attention.key_length"] = s.head_dim
        meta[f"{a}.attention.value_length"] = s.head_dim
        meta[f"{a}.attention.sliding_window"] = s.sliding_window
    else:
        meta[f"{a}.rope.dimension_count"] = s.head_dim
        meta[f"{a}.vocab_size"] = s.n_vocab
    meta.update({
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": ArraySummary("string", s.n_vocab),
        "tokenizer.ggml.scores": ArraySummary("float32", s.n_vocab),
        "tokenizer.ggml.token_type": ArraySummary("int32", s.n_vocab),
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_eos_token": False,
    })
    return meta


def shape_header(shape: Shape, mix: QuantMix, alignment: int = 32) -> GGUFHeader:
    """The header a GGUF of this shape would have (offsets laid out as GGUFWriter
    does; ``file_bytes`` counts the tensor data, not the few MB of vocabulary)."""
    infos = []
    offset = 0
    for name, ne, t in tensor_list(shape, mix):
        n_bytes = _n_bytes(t, ne)
        infos.append(TensorInfo(name, ne, int(t), t.name, offset, n_bytes))
        offset += -(-n_bytes // alignment) * alignment
    return GGUFHeader(Path(f"{shape.name}:{mix.name}"), offset, 3,
                      shape_metadata(shape, mix), infos, 0)
