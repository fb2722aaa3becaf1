"""Write a synthetic GGUF of a built-in shape: real tensor names, shapes and quant
types, random weights, a tokenizer llama.cpp accepts. The tokens are noise; the memory
and speed are real.

Weights are random bytes with every block's f16 scale fields (``d``, ``dmin``)
overwritten by small finite values, so no block decodes to NaN or inf and activations
stay bounded. The data is written tensor by tensor from a small pre-patched pool of
blocks per type, so a 40 GiB file needs a few hundred MB of RAM and runs at disk speed.

The vocabulary is the shape's real size as a SentencePiece-style ("llama") tokenizer:
``<unk>``, ``<s>``, ``</s>``, the 256 byte tokens ``<0x00>``..``<0xFF>`` (so any text
tokenizes by byte fallback), the shape's turn markers as control tokens, then filler
pieces.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter

from engine.errors import ModelFileError
from engine.model.memory.shapes import QuantMix, Shape, shape_metadata, tensor_list

Q = GGMLQuantizationType
POOL_BYTES = 32 * 1024 * 1024
# Byte offsets of each block's f16 scales, and the value written there: chosen so a
# typical weight is ~0.02 (d x scale x quant), like a trained model's.
_SCALES: dict[Q, tuple[tuple[int, ...], float]] = {
    Q.Q4_0: ((0,), 0.003), Q.Q4_1: ((0, 2), 0.003), Q.Q5_0: ((0,), 0.0025),
    Q.Q5_1: ((0, 2), 0.0015), Q.Q8_0: ((0,), 0.0003),
    Q.Q2_K: ((80, 82), 0.0008), Q.Q3_K: ((108,), 0.0005), Q.Q4_K: ((0, 2), 0.0001),
    Q.Q5_K: ((0, 2), 0.00005), Q.Q6_K: ((208,), 0.00002),
}
TURN_MARKERS = {
    "gemma3": ["<start_of_turn>", "<end_of_turn>"],
    "llama": ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
}
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_BYTE = 1, 2, 3, 6

Progress = Callable[[int, int], None]
"""Called with (bytes written, bytes in all) as tensors are written."""


def _pool(t: Q, rng: np.random.Generator) -> np.ndarray:
    """Random blocks of type ``t`` with valid scales (a multiple of the block size)."""
    if t in (Q.F32, Q.F16):
        dtype = np.float32 if t == Q.F32 else np.float16
        n = POOL_BYTES // np.dtype(dtype).itemsize
        return (rng.standard_normal(n, dtype=np.float32) * 0.02).astype(dtype).view(np.uint8)
    if t not in _SCALES:
        raise ModelFileError(f"cannot synthesize weights of type {t.name}")
    _, size = GGML_QUANT_SIZES[t]
    blocks = np.frombuffer(rng.bytes(POOL_BYTES // size * size), np.uint8).copy()
    blocks = blocks.reshape(-1, size)
    offsets, value = _SCALES[t]
    scale = np.frombuffer(np.float16(value).tobytes(), np.uint8)
    for off in offsets:
        blocks[:, off:off + 2] = scale
    return blocks.reshape(-1)


def _vocab(shape: Shape) -> tuple[list[str], list[float], list[int]]:
    tokens = ["<unk>", "<s>", "</s>"]
    types = [TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [TOKEN_BYTE] * 256
    for marker in TURN_MARKERS.get(shape.architecture, []):
        tokens.append(marker)
        types.append(TOKEN_CONTROL)
    filler = shape.n_vocab - len(tokens)
    if filler < 0:
        raise ModelFileError(f"shape {shape.name} has too small a vocabulary")
    tokens += [f"\u2581w{i}" for i in range(filler)]
    types += [TOKEN_NORMAL] * filler
    scores = [0.0] * 259 + [-float(i) for i in range(len(tokens) - 259)]
    return tokens, scores, types


def write_synthetic(shape: Shape, mix: QuantMix, path: str | Path, *, seed: int = 0,
                    progress: Progress | None = None) -> int:
    """Write the file; returns its size in bytes. Raises ModelFileError on I/O errors."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ModelFileError(f"{path} is a directory; give a file name ending in .gguf")
    if not path.parent.exists():
        raise ModelFileError(f"folder {path.parent} does not exist")
    rng = np.random.default_rng(seed)
    tensors = tensor_list(shape, mix)
    writer = GGUFWriter(str(path), shape.architecture)
    _add_metadata(writer, shape, mix)
    sizes = []
    for name, ne, t in tensor_list(shape, mix):
        block, size = GGML_QUANT_SIZES[t]
        n_bytes = int(np.prod(ne)) // block * size
        sizes.append(n_bytes)
        # GGUFWriter takes numpy order (reversed) and, for raw bytes, the byte shape.
        byte_shape = [*reversed(ne[1:]), ne[0] // block * size]
        writer.add_tensor_info(name, byte_shape, np.dtype(np.uint8), n_bytes, raw_dtype=t)
    total = sum(sizes)
    pools: dict[Q, np.ndarray] = {}
    written = 0
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        assert writer.fout is not None
        fout = writer.fout[0]
        for (_name, _ne, t), n_bytes in zip(tensors, sizes, strict=True):
            pool = pools.get(t)
            if pool is None:
                pool = pools[t] = _pool(t, rng)
            writer.write_padding(fout, fout.tell())
            unit = GGML_QUANT_SIZES[t][1] if t not in (Q.F32, Q.F16) else 4
            start = int(rng.integers(0, len(pool) // unit)) * unit
            remaining = n_bytes
            while remaining:
                chunk = pool[start:start + remaining]
                fout.write(memoryview(chunk))
                remaining -= len(chunk)
                start = 0
            written += n_bytes
            if progress is not None:
                progress(written, total)
        fout.flush()
    except OSError as exc:
        raise ModelFileError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        writer.close()
    return os.path.getsize(path)


def _add_metadata(writer: GGUFWriter, shape: Shape, mix: QuantMix) -> None:
    meta = shape_metadata(shape, mix)
    skip = {"general.architecture", "tokenizer.ggml.tokens", "tokenizer.ggml.scores",
            "tokenizer.ggml.token_type"}
    for key, value in meta.items():
        if key in skip:
            continue
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        else:
            writer.add_string(key, str(value))
    tokens, scores, types = _vocab(shape)
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
