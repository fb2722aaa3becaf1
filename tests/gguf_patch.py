"""Copy a GGUF with some of its metadata changed: the tests' way to a model file whose
chat template, special tokens or token types are not the bundled one's."""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGUFValueType


def _field_offset(reader: GGUFReader, key: str, part: int) -> int:
    field = reader.fields[key]
    return field.offset + sum(p.nbytes for p in field.parts[:part])


def _string_kv(key: str, value: str) -> bytes:
    k, v = key.encode(), value.encode()
    return (struct.pack("<Q", len(k)) + k + struct.pack("<I", GGUFValueType.STRING)
            + struct.pack("<Q", len(v)) + v)


def patch_gguf(src: Path, dst: Path, *, template: str | None = None,
               scalars: dict[str, int | bool] | None = None,
               token_text: dict[int, str] | None = None,
               token_type: dict[int, int] | None = None) -> Path:
    """Write ``src`` to ``dst`` with the chat template replaced (or added: not needed
    here), scalar integer/bool keys set, and tokens renamed (same length) or retyped."""
    reader = GGUFReader(str(src))
    data = bytearray(src.read_bytes())
    for key, value in (scalars or {}).items():
        field = reader.fields[key]
        part = field.parts[field.data[0]]
        start = _field_offset(reader, key, field.data[0])
        data[start:start + part.nbytes] = np.array([value], dtype=part.dtype).tobytes()
    tokens = reader.fields["tokenizer.ggml.tokens"]
    for token, text in (token_text or {}).items():
        idx = tokens.data[token]
        old = bytes(tokens.parts[idx])
        assert len(text.encode()) == len(old), "a renamed token keeps its length"
        start = _field_offset(reader, "tokenizer.ggml.tokens", idx)
        data[start:start + len(old)] = text.encode()
    types = reader.fields["tokenizer.ggml.token_type"]
    for token, kind in (token_type or {}).items():
        start = _field_offset(reader, "tokenizer.ggml.token_type", types.data[token])
        data[start:start + 4] = struct.pack("<i", kind)
    if template is not None:
        field = reader.fields["tokenizer.chat_template"]
        size = sum(p.nbytes for p in field.parts)
        end = max(t.field.offset + sum(p.nbytes for p in t.field.parts) for t in reader.tensors)
        header = (data[:field.offset] + _string_kv("tokenizer.chat_template", template)
                  + data[field.offset + size:end])
        header += b"\0" * (-len(header) % reader.alignment)
        data = header + data[reader.data_offset:]
    dst.write_bytes(data)
    return dst


@dataclass(frozen=True)
class Raw:
    """A metadata value written as given: its GGUF type and the bytes after the type,
    for values no writer would make (a wrong type, a lying array length, deep nesting)."""

    vtype: int
    payload: bytes


def encode_value(vtype: GGUFValueType, value: object) -> bytes:
    """The bytes of ``value`` as GGUF type ``vtype`` (after the type field). An array
    is ``(element type, [elements])``; its elements encode the same way."""
    if vtype == GGUFValueType.STRING:
        raw = str(value).encode()
        return struct.pack("<Q", len(raw)) + raw
    if vtype == GGUFValueType.ARRAY:
        etype, items = value  # type: ignore[misc]
        body = b"".join(encode_value(etype, item) for item in items)
        return struct.pack("<IQ", etype, len(items)) + body
    fmt = {GGUFValueType.UINT8: "B", GGUFValueType.INT8: "b", GGUFValueType.UINT16: "H",
           GGUFValueType.INT16: "h", GGUFValueType.UINT32: "I", GGUFValueType.INT32: "i",
           GGUFValueType.FLOAT32: "f", GGUFValueType.BOOL: "?", GGUFValueType.UINT64: "Q",
           GGUFValueType.INT64: "q", GGUFValueType.FLOAT64: "d"}[vtype]
    return struct.pack("<" + fmt, value)


def _kv_bytes(key: str, value: Raw | tuple[GGUFValueType, object]) -> bytes:
    k = key.encode()
    raw = value if isinstance(value, Raw) else Raw(value[0], encode_value(*value))
    return struct.pack("<Q", len(k)) + k + struct.pack("<I", raw.vtype) + raw.payload


@functools.lru_cache(maxsize=8)
def _layout(src: Path, size: int, mtime_ns: int) -> tuple[list[tuple[str, int, int]], int,
                                                         int, int, int]:
    """Where ``src``'s metadata pairs lie, (key, offset, size) each; where its metadata
    and tensor records end, its data starts, and its alignment (read once per file:
    GGUFReader parses every vocabulary entry)."""
    reader = GGUFReader(str(src))
    fields = [(f.name, f.offset, sum(p.nbytes for p in f.parts))
              for f in reader.fields.values() if not f.name.startswith("GGUF.")]
    infos_end = max(t.field.offset + sum(p.nbytes for p in t.field.parts)
                    for t in reader.tensors)
    return (fields, max(o + n for _, o, n in fields), infos_end, reader.data_offset,
            reader.alignment)


def rewrite_kv(src: Path, dst: Path,
               changes: dict[str, Raw | tuple[GGUFValueType, object] | None]) -> Path:
    """Write ``src`` to ``dst`` with metadata keys replaced in place, added at the end
    (keys ``src`` lacks) or removed (None); tensors and their data stay as they are."""
    stat = src.stat()
    fields, kv_end, infos_end, data_offset, alignment = _layout(src, stat.st_size,
                                                                stat.st_mtime_ns)
    data = src.read_bytes()
    out = bytearray()
    count = 0
    for name, offset, size in fields:
        if name not in changes:
            out += data[offset:offset + size]
            count += 1
        elif changes[name] is not None:
            out += _kv_bytes(name, changes[name])  # type: ignore[arg-type]
            count += 1
    known = {name for name, _, _ in fields}
    for key, value in changes.items():
        if key not in known and value is not None:
            out += _kv_bytes(key, value)
            count += 1
    header = bytearray(data[:16]) + struct.pack("<Q", count) + out + data[kv_end:infos_end]
    header += b"\0" * (-len(header) % alignment)
    dst.write_bytes(bytes(header) + data[data_offset:])
    return dst
