"""What a GGUF header must hold before llama.cpp, the memory planner or ``kvchat models``
may trust it.

llama.cpp refuses most broken files with an error kvchat can report, but a few values
it only asserts on, and a failed ``GGML_ASSERT`` ends the whole process: a block count
of 0 or over 512, expert counts that contradict each other, more next-token-prediction
layers than layers, an unknown RoPE scaling type, a vocabulary that lists a token twice
(the header reader checks that one). Those are checked here, with what kvchat itself
reads from a header: every count a whole number in range, per-layer arrays one entry
per layer, the layers the tensors hold (``blk.N.*``) exactly those the block count
names, the embedding width that of ``token_embd.weight``, the KV heads dividing the
query heads, the rotary dimensions within a head. Nothing here loops over a count read
from the file: only over the metadata and tensor records already read.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from engine.errors import ModelFileError

if TYPE_CHECKING:
    from engine.model.gguf_header import GGUFHeader

MAX_LAYERS = 512
"""llama.cpp's LLAMA_MAX_LAYERS."""
MAX_EXPERTS = 512
"""llama.cpp's LLAMA_MAX_EXPERTS."""
U32_LIMIT = 2**32
ROPE_SCALING_TYPES = ("none", "linear", "yarn", "longrope")

# Architecture-scoped keys (``{arch}.KEY``) kvchat or llama.cpp reads as one count.
_COUNTS = ("block_count", "context_length", "embedding_length", "vocab_size",
           "attention.key_length", "attention.value_length", "attention.sliding_window",
           "rope.dimension_count", "expert_count", "expert_group_count",
           "expert_group_used_count", "nextn_predict_layers")
# Keys that may instead hold one count per layer.
_PER_LAYER = ("feed_forward_length", "attention.head_count", "attention.head_count_kv",
              "expert_used_count")
_REALS = ("rope.freq_base", "rope.scaling.factor", "attention.layer_norm_rms_epsilon",
          "attention.layer_norm_epsilon")
_GENERAL_COUNTS = {"general.file_type": U32_LIMIT, "general.quantization_version": U32_LIMIT,
                   "general.parameter_count": 2**64}
# Where ``embedding_length`` is not the width of the token embeddings.
_OTHER_EMBEDDING = frozenset({"wavtokenizer-dec"})
# Architectures that treat a single expert as none.
_ONE_EXPERT_IS_NONE = frozenset({"hunyuan-dense", "hunyuan_vl"})


def label(text: str, limit: int = 80) -> str:
    """A key or tensor name for a one-line message: as it is when printable, else
    quoted with escapes; shortened past ``limit`` characters."""
    short = text if len(text) <= limit else text[: limit - 1] + "…"
    return short if short.isprintable() and short.strip() == short and short else repr(short)


def shown(value: Any) -> str:
    """A value read from a file, described in a few words for a message."""
    if isinstance(value, str):
        short = value if len(value) <= 40 else value[:39] + "…"
        return f"the text {short!r}"  # repr escapes what a terminal would act on
    if isinstance(value, bool):
        return f"the boolean {value}"
    if isinstance(value, list):
        return f"an array of {len(value)}"
    if hasattr(value, "length") and hasattr(value, "element_type"):  # ArraySummary
        return f"an array of {value.length}"
    if isinstance(value, float):
        return f"the fraction {value!r}" if math.isfinite(value) else f"{value!r}"
    return repr(value)


def check_header(header: GGUFHeader) -> None:
    """Raise ModelFileError, one line, for the first value llama.cpp would abort on or
    kvchat could not use."""
    path, meta = header.path, header.metadata
    arch = meta.get("general.architecture")
    if not isinstance(arch, str) or not arch.strip():
        raise ModelFileError(f"{path}: GGUF file has no general.architecture"
                             if arch is None else
                             f"{path}: general.architecture is {shown(arch)}, not a name")
    name = meta.get("general.name")
    if name is not None and not isinstance(name, str):
        raise ModelFileError(f"{path}: general.name is {shown(name)}, not text")
    for key, limit in _GENERAL_COUNTS.items():
        _count(header, key, limit)
    if arch == "clip":  # a vision projector: llama.cpp reads none of the model's counts
        return
    for suffix in _COUNTS:
        _count(header, f"{arch}.{suffix}")
    for suffix in _REALS:
        _real(header, f"{arch}.{suffix}")
    n_layers = _block_count(header, arch)
    per_layer = {suffix: _per_layer(header, f"{arch}.{suffix}", n_layers)
                 for suffix in _PER_LAYER}
    rope = meta.get(f"{arch}.rope.scaling.type")
    if rope is not None and rope not in ROPE_SCALING_TYPES:
        raise ModelFileError(f"{path}: {arch}.rope.scaling.type is {shown(rope)}; llama.cpp "
                             f"knows {', '.join(ROPE_SCALING_TYPES)}")
    _check_layers(header, arch, n_layers)
    _check_experts(header, arch, per_layer["expert_used_count"])
    _check_widths(header, arch, per_layer["attention.head_count"],
                  per_layer["attention.head_count_kv"])


def _fail(header: GGUFHeader, text: str) -> ModelFileError:
    return ModelFileError(f"{header.path}: {text}")


def _is_count(value: Any, limit: int = U32_LIMIT) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < limit


def _count(header: GGUFHeader, key: str, limit: int = U32_LIMIT) -> int | None:
    value = header.metadata.get(key)
    if value is None:
        return None
    if not _is_count(value, limit):
        raise _fail(header, f"{label(key)} is {shown(value)}, not a whole number from 0 to "
                            f"{limit - 1}")
    return int(value)


def _real(header: GGUFHeader, key: str) -> None:
    value = header.metadata.get(key)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value):
        raise _fail(header, f"{label(key)} is {shown(value)}, not a finite number")


def _block_count(header: GGUFHeader, arch: str) -> int | None:
    n = _count(header, f"{arch}.block_count")
    if n is not None and not 1 <= n <= MAX_LAYERS:
        raise _fail(header, f"{label(arch)}.block_count is {n}; llama.cpp takes 1 to "
                            f"{MAX_LAYERS} layers")
    nextn = header.metadata.get(f"{arch}.nextn_predict_layers")
    if nextn is not None and n is not None and nextn > n:
        raise _fail(header, f"{label(arch)}.nextn_predict_layers ({nextn}) is more than "
                            f"the {n} layers")
    return n


def _per_layer(header: GGUFHeader, key: str, n_layers: int | None) -> list[int] | None:
    """The key's counts, one per layer (a single count stands for every layer); None
    when absent."""
    value = header.metadata.get(key)
    if value is None:
        return None
    if isinstance(value, list):
        if not all(_is_count(v) for v in value):
            bad = next(v for v in value if not _is_count(v))
            raise _fail(header, f"{label(key)} holds {shown(bad)}, not a whole number from "
                                f"0 to {U32_LIMIT - 1}")
        if n_layers is not None and len(value) != n_layers:
            raise _fail(header, f"{label(key)} has {len(value)} entries for {n_layers} "
                                "layers")
        return list(value) or None
    if not _is_count(value):
        raise _fail(header, f"{label(key)} is {shown(value)}, not a whole number from 0 to "
                            f"{U32_LIMIT - 1} (or one per layer)")
    return [int(value)] * (n_layers or 1)


def layer_index(name: str) -> int | None:
    """N of a repeating block's tensor name ``blk.N.*``; None for any other name."""
    parts = name.split(".", 2)
    if len(parts) > 2 and parts[0] == "blk" and parts[1].isdecimal() \
            and len(parts[1]) <= 6 and parts[1].isascii():
        return int(parts[1])
    return None


def _check_layers(header: GGUFHeader, arch: str, n_layers: int | None) -> None:
    """The layers the tensors hold are exactly those the block count names. Files
    that name no tensor ``blk.N`` (encoders' ``enc.blk.N``, other layouts) are left
    to llama.cpp, which refuses what it cannot build."""
    layers = {n for n in map(layer_index, (t.name for t in header.tensors)) if n is not None}
    if not layers:
        return
    if n_layers is None:
        raise _fail(header, f"tensors name layers (blk.N) but there is no "
                            f"{label(arch)}.block_count")
    beyond = max(layers)
    if beyond >= n_layers:
        raise _fail(header, f"{label(arch)}.block_count is {n_layers}, but the file has "
                            f"tensors for layer {beyond}")
    if len(layers) < n_layers:
        missing = min(set(range(n_layers)) - layers)
        raise _fail(header, f"{label(arch)}.block_count is {n_layers}, but the file has "
                            f"no tensors for layer {missing} ({len(layers)} layers present)")


def _check_experts(header: GGUFHeader, arch: str, used_per_layer: list[int] | None) -> None:
    a = label(arch)
    n_expert = header.metadata.get(f"{arch}.expert_count") or 0
    used = max(used_per_layer or [0])
    groups = header.metadata.get(f"{arch}.expert_group_count") or 0
    group_used = header.metadata.get(f"{arch}.expert_group_used_count") or 0
    if arch in _ONE_EXPERT_IS_NONE and n_expert <= 1:
        return
    if n_expert > MAX_EXPERTS:
        raise _fail(header, f"{a}.expert_count is {n_expert}; llama.cpp takes at most "
                            f"{MAX_EXPERTS}")
    if used > n_expert:
        raise _fail(header, f"{a}.expert_used_count ({used}) is more than "
                            f"{a}.expert_count ({n_expert})")
    if n_expert and not used:
        raise _fail(header, f"{a}.expert_count is {n_expert} but no expert is used "
                            f"({a}.expert_used_count is 0 or missing)")
    if (n_expert and groups >= n_expert) or (not n_expert and groups):
        raise _fail(header, f"{a}.expert_group_count ({groups}) does not fit "
                            f"{n_expert} experts")
    if groups > 1 and (n_expert % groups or not 0 < group_used < groups):
        raise _fail(header, f"{a}: {n_expert} experts in {groups} groups of which "
                            f"{group_used} are used do not add up")


def _check_widths(header: GGUFHeader, arch: str, heads: list[int] | None,
                  kv_heads: list[int] | None) -> None:
    meta, a = header.metadata, label(arch)
    n_embd = meta.get(f"{arch}.embedding_length")
    embd = next((t for t in header.tensors if t.name == "token_embd.weight"), None)
    if n_embd is not None and embd is not None and len(embd.shape) == 2 \
            and arch not in _OTHER_EMBEDDING and embd.shape[0] != n_embd:
        raise _fail(header, f"{a}.embedding_length is {n_embd}, but token_embd.weight is "
                            f"{embd.shape[0]} wide")
    if not heads:
        return
    for layer, (h, kv) in enumerate(zip(heads, kv_heads or heads, strict=False)):
        if kv and (h < kv or h % kv):
            arrays = any(isinstance(meta.get(f"{arch}.attention.{k}"), list)
                         for k in ("head_count", "head_count_kv"))
            where = f" in layer {layer}" if arrays else ""
            raise _fail(header, f"{a}.attention.head_count_kv ({kv}) does not divide "
                                f"attention.head_count ({h}){where}")
    head_dim = meta.get(f"{arch}.attention.key_length")
    if head_dim is None and heads[0] and n_embd is not None:
        if n_embd % heads[0]:
            raise _fail(header, f"{a}.embedding_length ({n_embd}) is not a whole number of "
                                f"heads ({heads[0]})")
        head_dim = n_embd // heads[0]
    n_rot = meta.get(f"{arch}.rope.dimension_count")
    if n_rot is not None and head_dim is not None and n_rot > head_dim:
        raise _fail(header, f"{a}.rope.dimension_count ({n_rot}) is more than a head's "
                            f"{head_dim} dimensions")
