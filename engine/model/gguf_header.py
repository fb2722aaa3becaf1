"""Read and validate a GGUF header without loading any weights.

llama.cpp can abort the whole process on a malformed file, so every file is checked
here first: magic, version, counts, every metadata value and tensor record within the
file, every tensor's data within the file. The result also carries what the memory
planner needs (architecture, layers, heads, per-tensor types and bytes).

The ``gguf`` package's ``GGUFReader`` parses every metadata array into numpy objects
(7.6 s for Gemma 3's 262k-entry vocabulary on a 2-core machine), so this reader walks
the header itself and skips large arrays, using the package's type tables for sizes.

The file may be hostile: no count read from it sizes any work before the bytes it
claims are known to be there (each key, tensor record and array element takes at
least a few bytes), arrays of arrays are refused as llama.cpp refuses them (so
nothing recurses), and the values kvchat and llama.cpp rely on are checked by
:mod:`engine.model.gguf_checks`. Every failure is a one-line ``ModelFileError``.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from engine.errors import ModelFileError
from engine.model.gguf_checks import check_header, label, shown

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
# Numeric arrays up to this length are kept in the metadata (per-layer values: llama.cpp
# takes at most 512 layers), string arrays up to KEEP_STRINGS_MAX; longer ones
# (vocabularies, merges, scores) are skipped and only their length recorded.
KEEP_ARRAY_MAX = 512
KEEP_STRINGS_MAX = 64
# The fewest bytes a metadata pair (key length, type, a one-byte value) and a tensor
# record (name length, dims, one dim, type, offset) take: counts that claim more than
# the rest of the file holds are refused before anything loops over them.
_MIN_KV_BYTES = 8 + 4 + 1
_MIN_TENSOR_BYTES = 8 + 4 + 8 + 4 + 8
VOCABULARY_KEY = "tokenizer.ggml.tokens"
MAX_TENSORS = 1_000_000
MAX_KV = 100_000
MAX_STRING = 64 * 1024 * 1024

_SCALARS: dict[int, struct.Struct] = {
    GGUFValueType.UINT8: struct.Struct("<B"),
    GGUFValueType.INT8: struct.Struct("<b"),
    GGUFValueType.UINT16: struct.Struct("<H"),
    GGUFValueType.INT16: struct.Struct("<h"),
    GGUFValueType.UINT32: struct.Struct("<I"),
    GGUFValueType.INT32: struct.Struct("<i"),
    GGUFValueType.FLOAT32: struct.Struct("<f"),
    GGUFValueType.BOOL: struct.Struct("<?"),
    GGUFValueType.UINT64: struct.Struct("<Q"),
    GGUFValueType.INT64: struct.Struct("<q"),
    GGUFValueType.FLOAT64: struct.Struct("<d"),
}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


@dataclass(frozen=True)
class ArraySummary:
    """A metadata array too long to keep: its element type and length."""

    element_type: str
    length: int


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    ggml_type: int
    type_name: str
    offset: int
    """Absolute byte offset of the tensor's data in the file."""
    n_bytes: int


@dataclass(frozen=True)
class GGUFHeader:
    path: Path
    file_bytes: int
    version: int
    metadata: dict[str, Any]
    tensors: list[TensorInfo] = field(repr=False)
    data_offset: int

    def arch_value(self, key: str, default: Any = None) -> Any:
        """An architecture-scoped value, e.g. ``block_count`` -> ``gemma3.block_count``."""
        return self.metadata.get(f"{self.architecture}.{key}", default)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    @property
    def name(self) -> str:
        return str(self.metadata.get("general.name") or self.path.stem)

    def arch_int(self, key: str, default: int = 0) -> int:
        """An architecture-scoped count; the largest entry of a per-layer array (head
        counts, feed-forward widths); ``default`` when absent or not a count."""
        value = self.arch_value(key)
        if isinstance(value, list):
            value = max(value, default=default)
        return value if isinstance(value, int) and not isinstance(value, bool) else default

    @property
    def n_layers(self) -> int:
        return self.arch_int("block_count")

    @property
    def n_ctx_train(self) -> int:
        return self.arch_int("context_length")

    @property
    def chat_template(self) -> str | None:
        value = self.metadata.get("tokenizer.chat_template")
        return value if isinstance(value, str) and value.strip() else None

    @property
    def weights_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors)


class _Cursor:
    """Bounds-checked little-endian reads over the mapped file."""

    def __init__(self, buf: mmap.mmap | bytes, path: Path) -> None:
        self.buf = buf
        self.pos = 0
        self.size = len(buf)
        self.path = path

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise _truncated(self.path, f"while reading {what} at byte {self.pos}")

    def unpack(self, st: struct.Struct, what: str) -> Any:
        self.need(st.size, what)
        (value,) = st.unpack_from(self.buf, self.pos)
        self.pos += st.size
        return value

    def string(self, what: str) -> str:
        n = self.unpack(_U64, what)
        if n > MAX_STRING:
            raise ModelFileError(f"{self.path}: not a valid GGUF file ({what} claims {n} bytes)")
        self.need(n, what)
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def skip_strings(self, count: int, what: str, unique: bool = False) -> None:
        """Step over ``count`` strings; ``unique``: refuse a repeated non-empty one (a
        vocabulary that lists a token twice makes llama.cpp abort)."""
        buf, pos, size = self.buf, self.pos, self.size
        seen: dict[bytes, int] = {}
        for index in range(count):
            if pos + 8 > size:
                self.pos = pos
                raise _truncated(self.path, f"while reading {what}")
            (n,) = _U64.unpack_from(buf, pos)
            pos += 8 + n
            if unique and n and pos <= size:
                text = buf[pos - n:pos]
                first = seen.setdefault(text, index)
                if first != index:
                    raise ModelFileError(
                        f"{self.path}: the vocabulary lists "
                        f"{shown(text.decode('utf-8', 'replace'))} twice (tokens {first} "
                        f"and {index}); llama.cpp cannot load such a vocabulary")
        if pos > size:
            raise _truncated(self.path, f"while reading {what}")
        self.pos = pos


def _truncated(path: Path, detail: str) -> ModelFileError:
    return ModelFileError(f"{path}: GGUF file is truncated or corrupt ({detail})")


def _read_value(cur: _Cursor, vtype: int, key: str) -> Any:
    if vtype == GGUFValueType.STRING:
        return cur.string(f"value of {label(key)}")
    if vtype in _SCALARS:
        return cur.unpack(_SCALARS[vtype], f"value of {label(key)}")
    if vtype == GGUFValueType.ARRAY:
        return _read_array(cur, key)
    raise ModelFileError(f"{cur.path}: not a valid GGUF file (unknown value type {vtype} in "
                         f"{label(key)})")


def _read_array(cur: _Cursor, key: str) -> Any:
    etype = cur.unpack(_U32, f"array type of {label(key)}")
    length = cur.unpack(_U64, f"array length of {label(key)}")
    if etype == GGUFValueType.ARRAY:
        raise ModelFileError(f"{cur.path}: {label(key)} is an array of arrays, which "
                             "llama.cpp does not read")
    if etype == GGUFValueType.STRING:
        cur.need(8 * length, f"array {label(key)}")  # every string starts with its length
        if length <= KEEP_STRINGS_MAX:
            return [cur.string(f"array {label(key)}") for _ in range(length)]
        cur.skip_strings(length, f"array {label(key)}", unique=key == VOCABULARY_KEY)
        return ArraySummary("string", length)
    if etype not in _SCALARS:
        raise ModelFileError(f"{cur.path}: not a valid GGUF file (unknown array type {etype} "
                             f"in {label(key)})")
    st = _SCALARS[etype]
    cur.need(st.size * length, f"array {label(key)}")
    start = cur.pos
    cur.pos += st.size * length
    if length > KEEP_ARRAY_MAX:
        return ArraySummary(GGUFValueType(etype).name.lower(), length)
    return list(struct.unpack_from(f"<{length}{st.format[-1]}", cur.buf, start))


def _check_path(path: Path) -> int:
    if not path.exists():
        raise ModelFileError(f"model file not found: {path}")
    if path.is_dir():
        raise ModelFileError(f"{path} is a directory, not a GGUF model file")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ModelFileError(f"cannot read {path}: {exc.strerror}") from exc
    if size == 0:
        raise ModelFileError(f"{path} is empty, not a GGUF model file")
    return size


def read_gguf_header(path: str | Path) -> GGUFHeader:
    """Parse and validate ``path``'s GGUF header. Raises :class:`ModelFileError`."""
    path = Path(path).expanduser()
    file_bytes = _check_path(path)
    try:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _parse(buf, path, file_bytes)
    except OSError as exc:
        raise ModelFileError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _parse(buf: mmap.mmap, path: Path, file_bytes: int) -> GGUFHeader:
    if file_bytes < 24 or buf[:4] != GGUF_MAGIC:
        raise ModelFileError(f"{path} is not a GGUF model file (no GGUF magic at the start)")
    cur = _Cursor(buf, path)
    cur.pos = 4
    version = cur.unpack(_U32, "version")
    if version not in SUPPORTED_VERSIONS:
        raise ModelFileError(f"{path}: unsupported GGUF version {version}")
    n_tensors = cur.unpack(_U64, "tensor count")
    n_kv = cur.unpack(_U64, "metadata count")
    if n_tensors > MAX_TENSORS or n_kv > MAX_KV \
            or n_kv * _MIN_KV_BYTES + n_tensors * _MIN_TENSOR_BYTES > file_bytes - cur.pos:
        raise _truncated(path, f"it claims {n_kv} metadata entries and {n_tensors} "
                               f"tensors, more than its {file_bytes} bytes hold")

    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string("metadata key")
        vtype = cur.unpack(_U32, f"type of {label(key)}")
        metadata[key] = _read_value(cur, vtype, key)

    raw_tensors = []
    for _ in range(n_tensors):
        name = cur.string("tensor name")
        n_dims = cur.unpack(_U32, f"dims of {label(name)}")
        if not 1 <= n_dims <= 4:
            raise ModelFileError(f"{path}: tensor {shown(name)} has {n_dims} dimensions")
        shape = tuple(cur.unpack(_U64, f"shape of {label(name)}") for _ in range(n_dims))
        ggml_type = cur.unpack(_U32, f"type of {label(name)}")
        rel_offset = cur.unpack(_U64, f"offset of {label(name)}")
        raw_tensors.append((name, shape, ggml_type, rel_offset))

    alignment = _alignment(path, metadata)
    data_offset = -(-cur.pos // alignment) * alignment
    tensors = [_tensor(path, data_offset, *raw) for raw in raw_tensors]

    end = max((t.offset + t.n_bytes for t in tensors), default=data_offset)
    if end > file_bytes:
        missing = end - file_bytes
        raise _truncated(path, f"tensor data needs {end} bytes, file has {file_bytes}; "
                               f"{missing} bytes missing")
    header = GGUFHeader(path, file_bytes, version, metadata, tensors, data_offset)
    check_header(header)
    return header


def _alignment(path: Path, metadata: dict[str, Any]) -> int:
    value = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 2**32 \
            or value & (value - 1):
        raise ModelFileError(f"{path}: general.alignment is {shown(value)}, not a power of "
                             "two (llama.cpp reads no other)")
    return value


def _tensor(path: Path, data_offset: int, name: str, shape: tuple[int, ...], ggml_type: int,
            rel_offset: int) -> TensorInfo:
    try:
        qtype = GGMLQuantizationType(ggml_type)
        block, type_size = GGML_QUANT_SIZES[qtype]
    except (ValueError, KeyError):
        raise ModelFileError(f"{path}: tensor {shown(name)} has unknown type {ggml_type}") \
            from None
    n_elements = 1
    for dim in shape:
        n_elements *= dim
    if n_elements % block:
        raise ModelFileError(f"{path}: tensor {shown(name)} shape {shape} is not whole "
                             f"{qtype.name} blocks")
    return TensorInfo(name, shape, ggml_type, qtype.name, data_offset + rel_offset,
                      n_elements // block * type_size)
