"""GGUF metadata, fuzzed: random keys, types, values, array lengths (true or not) and
nesting over a small sound llama file, against the header reader, the memory planner
and ``kvchat models``' description of a file. Whatever comes, the only exception is
kvchat's own ModelFileError with a one-line message, and every file is done within
the example deadline (a bound on work sized by hostile numbers, not a speed figure).
"""

from __future__ import annotations

import math
import struct
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from gguf import GGUFValueType as T
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from engine.errors import ModelFileError
from engine.model.catalog import Found, describe
from engine.model.gguf_header import read_gguf_header
from engine.model.memory.budget import Budget
from engine.model.memory.kv_cost import kv_bytes_per_token
from engine.model.memory.planner import plan_memory

GiB = 1024**3
BUDGET = Budget("cpu", "CPU", 8 * GiB, "given", 8 * GiB)
ALIGNMENT = 32

_INTS = {T.UINT8: "B", T.INT8: "b", T.UINT16: "H", T.INT16: "h", T.UINT32: "I",
         T.INT32: "i", T.UINT64: "Q", T.INT64: "q"}
_SCALARS = [*_INTS, T.FLOAT32, T.FLOAT64, T.BOOL]
# Keys kvchat or llama.cpp reads, where a wrong value would do harm.
_ARCH_KEYS = ["block_count", "context_length", "embedding_length", "feed_forward_length",
              "attention.head_count", "attention.head_count_kv", "attention.key_length",
              "attention.value_length", "attention.sliding_window", "vocab_size",
              "rope.dimension_count", "rope.freq_base", "rope.scaling.type", "expert_count",
              "expert_used_count", "expert_group_count", "expert_group_used_count",
              "nextn_predict_layers", "attention.layer_norm_rms_epsilon"]
KEYS = [*(f"llama.{k}" for k in _ARCH_KEYS), "general.alignment", "general.architecture",
        "general.name", "general.file_type", "general.parameter_count", "general.size_label",
        "tokenizer.ggml.tokens", "tokenizer.chat_template"]


def _u32(value: int) -> tuple[int, bytes]:
    return T.UINT32, struct.pack("<I", value)


def _string(text: str) -> bytes:
    raw = text.encode("utf-8", "surrogatepass")
    return struct.pack("<Q", len(raw)) + raw


# The sound file every example changes: a llama of two 8-wide layers.
BASE_METADATA: dict[str, tuple[int, bytes]] = {
    "general.architecture": (T.STRING, _string("llama")),
    "llama.block_count": _u32(2), "llama.context_length": _u32(64),
    "llama.embedding_length": _u32(8), "llama.feed_forward_length": _u32(16),
    "llama.attention.head_count": _u32(2), "llama.attention.head_count_kv": _u32(1),
}
BASE_TENSORS: list[tuple[str, tuple[int, ...], int]] = [
    ("token_embd.weight", (8, 16), 0), ("blk.0.attn_norm.weight", (8,), 0),
    ("blk.0.attn_q.weight", (8, 8), 0), ("blk.1.attn_norm.weight", (8,), 0),
    ("blk.1.attn_q.weight", (8, 8), 0), ("output_norm.weight", (8,), 0),
]
ODD_TENSOR_NAMES = ["blk.2.attn_norm.weight", "blk.99999999999999.x", "blk.².x", "blk..x",
                    "output.weight", "token_embd.weight", "blk.0.attn_norm.weight"]


def payload(vtype: int) -> st.SearchStrategy[bytes]:
    """A value of ``vtype`` (not an array) as GGUF bytes."""
    if vtype in _INTS:
        fmt = "<" + _INTS[vtype]
        size = struct.calcsize(fmt) * 8
        signed = fmt[-1].islower()
        lo, hi = (-(2 ** (size - 1)), 2 ** (size - 1) - 1) if signed else (0, 2**size - 1)
        return st.integers(lo, hi).map(lambda v: struct.pack(fmt, v))
    if vtype == T.FLOAT32:
        return st.floats(width=32).map(lambda v: struct.pack("<f", v))
    if vtype == T.FLOAT64:
        return st.floats().map(lambda v: struct.pack("<d", v))
    if vtype == T.BOOL:
        return st.booleans().map(lambda v: struct.pack("<?", v))
    return st.text(max_size=12).map(_string)


def array_payload(depth: int) -> st.SearchStrategy[bytes]:
    """An array's bytes (element type, length, elements), arrays of arrays up to
    ``depth`` deep."""
    types = [*_SCALARS, T.STRING, *([T.ARRAY] if depth > 0 else [])]

    def of(etype: int) -> st.SearchStrategy[bytes]:
        items = array_payload(depth - 1) if etype == T.ARRAY else payload(etype)
        return st.lists(items, max_size=5).map(
            lambda xs: struct.pack("<IQ", etype, len(xs)) + b"".join(xs))

    return st.sampled_from(types).flatmap(of)


VALUES: st.SearchStrategy[tuple[int, bytes]] = st.one_of(
    st.sampled_from([*_SCALARS, T.STRING]).flatmap(lambda t: payload(t).map(lambda p: (t, p))),
    st.integers(0, 1100).map(_u32),  # plausible counts, to reach the planner
    array_payload(3).map(lambda p: (T.ARRAY, p)),
    st.lists(st.integers(0, 12), min_size=1, max_size=4).map(  # per-layer counts
        lambda xs: (T.ARRAY, struct.pack(f"<IQ{len(xs)}I", T.UINT32, len(xs), *xs))),
    st.sampled_from([50, 5000]).map(  # nested far deeper than any writer would
        lambda d: (T.ARRAY, struct.pack("<IQ", T.ARRAY, 1) * d + struct.pack("<IQ", T.UINT8, 0))),
    st.tuples(st.sampled_from([*_SCALARS, T.STRING]), st.integers(0, 2**64 - 1)).map(
        lambda tn: (T.ARRAY, struct.pack("<IQ", *tn))),  # a length the bytes do not hold
    st.tuples(st.integers(0, 20), st.binary(max_size=24)),  # any type, any bytes
)


def build(metadata: dict[str, tuple[int, bytes]],
          tensors: list[tuple[str, tuple[int, ...], int]]) -> bytes:
    """A GGUF file's bytes: header, metadata, tensor records, then zeroed data (F32
    sizes, whatever type a record names)."""
    out = bytearray(b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata)))
    for key, (vtype, value) in metadata.items():
        out += _string(key) + struct.pack("<I", vtype) + value
    offset = 0
    for name, shape, ggml_type in tensors:
        out += _string(name) + struct.pack(f"<I{len(shape)}QIQ", len(shape), *shape,
                                           ggml_type, offset)
        offset += -(-4 * math.prod(shape) // ALIGNMENT) * ALIGNMENT
    out += b"\0" * (-len(out) % ALIGNMENT)
    return bytes(out) + b"\0" * offset


@st.composite
def gguf_files(draw: st.DrawFn) -> bytes:
    metadata = dict(BASE_METADATA)
    keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=24))
    for key, value in draw(st.dictionaries(keys, VALUES, max_size=3)).items():
        metadata[key] = value
    for key in draw(st.lists(st.sampled_from(list(BASE_METADATA)), max_size=2)):
        metadata.pop(key, None)
    tensors = list(BASE_TENSORS)
    # Most examples keep the tensors and the whole file, so that many get past the
    # reader's checks to the planner; some cut them or the file short.
    if draw(st.integers(0, 4)) == 0:
        extra = draw(st.lists(st.tuples(
            st.sampled_from(ODD_TENSOR_NAMES),
            st.lists(st.integers(1, 16), min_size=1, max_size=2).map(tuple),
            st.sampled_from([0, 1, 2, 8, 12, 99])), max_size=2))
        tensors = draw(st.permutations(tensors))[: draw(st.integers(0, len(tensors)))] + extra
    data = build(metadata, tensors)
    return data[:draw(st.integers(0, len(data)))] if draw(st.integers(0, 9)) == 0 else data


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="kvchat-fuzz-") as folder:
        yield Path(folder)


def test_the_base_file_reads_and_plans(scratch: Path) -> None:
    path = scratch / "base.gguf"
    path.write_bytes(build(BASE_METADATA, BASE_TENSORS))
    header = read_gguf_header(path)
    assert (header.n_layers, len(header.tensors)) == (2, 6)
    assert plan_memory(header, BUDGET).n_layers == 2


@settings(max_examples=600, deadline=timedelta(seconds=5),
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(data=gguf_files())
def test_any_metadata_is_read_planned_and_described_or_refused_in_one_line(
        scratch: Path, data: bytes) -> None:
    path = scratch / "fuzzed.gguf"
    path.write_bytes(data)
    try:
        header = read_gguf_header(path)
    except ModelFileError as exc:
        assert exc.message and "\n" not in exc.message and "\r" not in exc.message
        event("refused by the header reader")
        return
    try:
        plan = plan_memory(header, BUDGET)
    except ModelFileError as exc:  # UnplannableModel: no figures to plan with
        assert "\n" not in exc.message
        event("read, not plannable")
    else:
        assert plan.n_layers == header.n_layers
        event("read and planned")
    assert kv_bytes_per_token(header) >= 0
    row = describe(Found("fuzzed", "config", path), BUDGET)
    assert not row.broken and "\n" not in row.verdict
