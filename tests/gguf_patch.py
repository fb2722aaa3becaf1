"""Copy a GGUF with some of its metadata changed: the tests' way to a model file whose
chat template, special tokens or token types are not the bundled one's."""

from __future__ import annotations

import struct
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
