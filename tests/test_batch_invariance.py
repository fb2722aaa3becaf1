"""Batch-invariant loads: a verification batch's rows are one-token decodes, bit for bit."""

from __future__ import annotations

from pathlib import Path

import llama_cpp
import numpy as np
import pytest
from llama_cpp import _internals

from engine.config import ModelConfig
from engine.errors import ConfigError
from engine.model.batch_invariance import wants_invariance
from engine.model.loader import LoadedModel, load_model

ROOT = Path(__file__).resolve().parent.parent


def _rows_differ(lm: LoadedModel, tokens: list[int], base: int,
                 sizes: list[int]) -> dict[int, float]:
    """For each batch size, the largest |batched - one-token| logit over its rows,
    with the batch starting at position ``base`` (after a prefill of that many)."""
    ctx, n_vocab = lm.ctx, lm.model.n_vocab()
    batch = _internals.LlamaBatch(n_tokens=max(*sizes, 512), embd=0, n_seq_max=1)

    def row(i: int) -> np.ndarray:
        ptr = llama_cpp.llama_get_logits_ith(ctx.ctx, i)
        return np.ctypeslib.as_array(ptr, shape=(n_vocab,)).copy()

    def prefill() -> None:
        ctx.kv_cache_clear()
        for pos in range(0, base, 512):
            batch.set_batch(tokens[pos:min(base, pos + 512)], n_past=pos, logits_all=False)
            ctx.decode(batch)

    prefill()
    single = []
    for j in range(max(sizes)):
        batch.set_batch([tokens[base + j]], n_past=base + j, logits_all=False)
        ctx.decode(batch)
        single.append(row(-1))
    worst: dict[int, float] = {}
    for size in sizes:
        prefill()
        batch.set_batch(tokens[base:base + size], n_past=base, logits_all=True)
        ctx.decode(batch)
        worst[size] = max(float(np.abs(row(i) - single[i]).max()) for i in range(size))
    return worst


def _source_tokens(lm: LoadedModel) -> list[int]:
    text = (ROOT / "engine" / "decode" / "kv_window.py").read_text() * 4
    return lm.model.tokenize(text.encode(), add_bos=True, special=False)


def test_an_invariant_load_decodes_batch_rows_exactly_like_single_tokens() -> None:
    # Past 512 cells llama.cpp's one-token attention splits the cache across threads,
    # and from 4 rows repacked weights take another GEMM: a default load differs there.
    lm = load_model(ModelConfig(n_ctx=1024), invariant=True)
    try:
        assert lm.info.batch_invariant and lm.info.kv_type == "q8_0" and lm.info.flash_attn
        assert lm.invariant_rows >= 7
        source_tokens = _source_tokens(lm)
        sizes = sorted({2, 4, 7, lm.invariant_rows})
        assert _rows_differ(lm, source_tokens, 600, sizes) == dict.fromkeys(sizes, 0.0)
        assert _rows_differ(lm, source_tokens, 40, [3, 5]) == {3: 0.0, 5: 0.0}
    finally:
        lm.close()
    plain = load_model(ModelConfig(n_ctx=1024, batch_invariant="off", kv_type="f16"))
    try:
        assert not plain.info.batch_invariant and plain.invariant_rows == 0
        assert max(_rows_differ(plain, source_tokens, 600, [2, 4]).values()) > 0.0
    finally:
        plain.close()


def test_when_to_load_batch_invariant() -> None:
    auto = ModelConfig()
    assert wants_invariance(auto, speculating=True, has_gpu=False)
    assert not wants_invariance(auto, speculating=False, has_gpu=False)
    # Offloading layers: CUDA picks kernels by batch width, so auto stays out of it.
    assert not wants_invariance(auto, speculating=True, has_gpu=True)
    assert wants_invariance(ModelConfig(n_gpu_layers=0), speculating=True, has_gpu=True)
    # The user's own cache type stands; a quantized one is invariant anyway.
    assert not wants_invariance(ModelConfig(kv_type="f16"), speculating=True, has_gpu=False)
    assert wants_invariance(ModelConfig(kv_type="q4_0"), speculating=True, has_gpu=False)
    assert not wants_invariance(ModelConfig(batch_invariant="off"), speculating=True,
                                has_gpu=False)
    assert wants_invariance(ModelConfig(batch_invariant="on"), speculating=False,
                            has_gpu=False)


@pytest.mark.parametrize(("config", "gpu", "message"), [
    (ModelConfig(batch_invariant="on", kv_type="f16"), False, "needs a quantized KV cache"),
    (ModelConfig(batch_invariant="on", flash_attn=False), False, "needs flash attention"),
    (ModelConfig(batch_invariant="on"), True, "CPU backend only"),
])
def test_batch_invariant_on_says_why_it_cannot_hold(config: ModelConfig, gpu: bool,
                                                    message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        wants_invariance(config, speculating=True, has_gpu=gpu)
