"""Synthetic GGUFs: the tensor list of the shape, valid scales, and llama.cpp runs them."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from engine.api import ChatMessage
from engine.backends.local import LocalEngine
from engine.config import ModelConfig, SamplingConfig
from engine.events import Done
from engine.model.gguf_header import read_gguf_header
from engine.model.memory.shapes import parse_shape, shape_header
from engine.model.memory.synth import write_synthetic
from tests.conftest import chat_request


def _tensors(header) -> dict:
    return {t.name: (t.shape, t.type_name, t.n_bytes) for t in header.tensors}


async def _generate(path: Path, n: int) -> Done:
    engine = LocalEngine(ModelConfig(path=path, n_ctx=512),
                         SamplingConfig(temperature=0.0, max_tokens=n, seed=0))
    try:
        await engine.start()
        done = None
        async for event in engine.chat(chat_request(
                [ChatMessage(role="user", content="hello there")], ignore_eos=True)):
            if isinstance(event, Done):
                done = event
        assert done is not None
        return done
    finally:
        await engine.close()


@pytest.mark.parametrize("spec", ["tiny-llama:Q4_K_M", "tiny-llama:Q8_0", "tiny-llama:F16"])
async def test_tiny_synth_round_trip(tmp_path: Path, spec: str) -> None:
    path = tmp_path / "tiny.gguf"
    shape, mix = parse_shape(spec)
    size = write_synthetic(shape, mix, path)
    header = read_gguf_header(path)
    assert size == path.stat().st_size
    assert _tensors(header) == _tensors(shape_header(shape, mix))
    assert header.metadata["general.file_type"] == mix.file_type
    done = await _generate(path, 8)
    assert done.finish_reason == "length" and done.completion_tokens == 8


def test_block_scales_are_small_and_finite(tmp_path: Path) -> None:
    path = tmp_path / "tiny.gguf"
    write_synthetic(*parse_shape("tiny-llama:Q4_K_M"), path)
    header = read_gguf_header(path)
    with open(path, "rb") as fh:
        for t in header.tensors:
            fh.seek(t.offset)
            if t.type_name == "Q4_K":  # d, dmin at bytes 0-3 of every 144-byte block
                blocks = np.frombuffer(fh.read(t.n_bytes), np.uint8).reshape(-1, 144)
                scales = blocks[:, :4].copy().view(np.float16)
                assert np.isfinite(scales).all() and (np.abs(scales) < 0.01).all()
            elif t.type_name == "Q6_K":  # d at bytes 208-209 of every 210-byte block
                blocks = np.frombuffer(fh.read(t.n_bytes), np.uint8).reshape(-1, 210)
                assert np.isfinite(blocks[:, 208:210].copy().view(np.float16)).all()
            elif t.type_name == "F32":
                values = struct.unpack(f"<{t.n_bytes // 4}f", fh.read(t.n_bytes))
                assert all(abs(v) < 1 for v in values)


async def test_gemma_synth_has_the_real_vocabulary_and_runs(tmp_path: Path,
                                                            gemma_path: Path) -> None:
    path = tmp_path / "gemma.gguf"
    write_synthetic(*parse_shape("gemma-3-270m:Q4_K_M"), path)
    header = read_gguf_header(path)
    assert _tensors(header) == _tensors(read_gguf_header(gemma_path))
    assert header.metadata["tokenizer.ggml.tokens"].length == 262_144
    done = await _generate(path, 4)
    assert done.completion_tokens == 4


def test_unwritable_destination(tmp_path: Path) -> None:
    from engine.errors import ModelFileError

    with pytest.raises(ModelFileError, match="does not exist"):
        write_synthetic(*parse_shape("tiny-llama:Q4_K_M"), tmp_path / "no" / "x.gguf")
    with pytest.raises(ModelFileError, match="is a directory"):
        write_synthetic(*parse_shape("tiny-llama:Q4_K_M"), tmp_path)
