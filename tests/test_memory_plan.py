"""Memory arithmetic from real GGUF headers and human sizes."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.gguf_header import read_gguf_header
from engine.memory_plan import kv_bytes_per_token, parse_size, weights_by_layer


@pytest.mark.parametrize("text, expected", [
    ("36GiB", 36 * 1024**3),
    ("36 GB", 36 * 1000**3),
    ("36000M", 36000 * 1000**2),
    ("1.5 TiB", int(1.5 * 1024**4)),
    ("512", 512),
])
def test_sizes_parse(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text, message", [
    ("lots", "not a size: 'lots'"),
    ("36 GX", "unknown unit 'gx'"),
    ("0GB", "must be positive"),
    ("", "not a size"),
])
def test_bad_sizes_are_clear(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_size(text)


def test_bundled_model_weights_and_kv(model_path: Path) -> None:
    header = read_gguf_header(model_path)
    per_layer, other = weights_by_layer(header)
    assert len(per_layer) == 18 and all(b > 0 for b in per_layer)
    assert sum(per_layer) + other == header.weights_bytes
    # Gemma 3 270M: 18 layers x 1 KV head x (256 K + 256 V) dims
    assert kv_bytes_per_token(header, "f16") == 18 * 1 * 512 * 2
    assert kv_bytes_per_token(header, "q8_0") == 18 * 512 * 34 // 32
    assert kv_bytes_per_token(header, "q4_0") == 18 * 512 * 18 // 32


def test_kv_per_token_of_a_70b_llama_header(tmp_path: Path) -> None:
    from gguf import GGUFWriter

    path = tmp_path / "llama70b-header.gguf"
    writer = GGUFWriter(str(path), "llama")
    writer.add_block_count(80)
    writer.add_embedding_length(8192)
    writer.add_head_count(64)
    writer.add_head_count_kv(8)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    header = read_gguf_header(path)
    # 80 layers x 8 KV heads x 128 dims x 2 (K and V) x 2 bytes
    assert kv_bytes_per_token(header, "f16") == 327_680
