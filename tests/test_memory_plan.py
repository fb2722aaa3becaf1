"""Memory arithmetic from real GGUF headers and human sizes."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import parse_size
from engine.model.gguf_header import read_gguf_header
from engine.model.memory.kv_cost import kv_bytes_per_token, weights_by_layer


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


def test_bundled_model_weights_and_kv(gemma_path: Path) -> None:
    header = read_gguf_header(gemma_path)
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


# -- built-in shapes --------------------------------------------------------------

def test_gemma_shape_matches_the_bundled_file(gemma_path: Path) -> None:
    from engine.model.memory.shapes import parse_shape, shape_header

    real = read_gguf_header(gemma_path)
    shape = shape_header(*parse_shape("gemma-3-270m:Q4_K_M"))
    as_dict = lambda h: {t.name: (t.shape, t.type_name, t.n_bytes) for t in h.tensors}  # noqa: E731
    assert as_dict(shape) == as_dict(real)  # names, shapes, quant types, bytes
    assert shape.weights_bytes == real.weights_bytes
    for key in ("block_count", "embedding_length", "feed_forward_length", "context_length",
                "attention.head_count", "attention.head_count_kv", "attention.key_length",
                "attention.sliding_window"):
        assert shape.arch_value(key) == real.arch_value(key), key
    assert kv_bytes_per_token(shape) == kv_bytes_per_token(real)


def test_llama_70b_q4_k_m_follows_the_quantizer() -> None:
    from engine.model.memory.shapes import parse_shape, shape_header

    h = shape_header(*parse_shape("llama-3.1-70b:Q4_K_M"))
    types = {t.name: t.type_name for t in h.tensors}
    assert kv_bytes_per_token(h, "f16") == 327_680
    assert types["output.weight"] == "Q6_K" and types["token_embd.weight"] == "Q4_K"
    # attn_v: Q6_K on the "more bits" layers, else Q4_K bumped to Q5_K for a 70B.
    assert types["blk.0.attn_v.weight"] == "Q6_K" and types["blk.11.attn_v.weight"] == "Q5_K"
    assert types["blk.12.attn_v.weight"] == "Q6_K"  # (12 - 10) % 3 == 2
    assert types["blk.0.ffn_down.weight"] == "Q6_K" and types["blk.11.ffn_down.weight"] == "Q4_K"
    assert types["blk.40.attn_q.weight"] == "Q4_K" and types["blk.40.attn_norm.weight"] == "F32"
    assert len(h.tensors) == 2 + 1 + 1 + 80 * 9
    assert h.weights_bytes == 42_512_531_712  # published files: 42.5 GB


@pytest.mark.parametrize("spec, gib", [
    ("llama-3.1-8b:Q4_K_M", 4.58), ("llama-3.1-8b:Q8_0", 7.95), ("llama-3.1-8b:F16", 14.96),
    ("llama-2-13b:Q5_K_M", 8.60), ("llama-3.1-70b:Q5_K_M", 46.51),
])
def test_shape_sizes(spec: str, gib: float) -> None:
    from engine.model.memory.shapes import parse_shape, shape_header

    h = shape_header(*parse_shape(spec))
    assert round(h.weights_bytes / 1024**3, 2) == gib
    assert types_of(h, "blk.1.attn_v.weight") in {"Q4_K", "Q5_K", "Q6_K", "Q8_0", "F16"}


def types_of(h, name: str) -> str:
    return next(t.type_name for t in h.tensors if t.name == name)


@pytest.mark.parametrize("spec, message", [
    ("llama-9b:Q4_K_M", "unknown shape 'llama-9b'"),
    ("llama-3.1-8b:Q7_K", "unknown quant type 'Q7_K'"),
    ("llama-3.1-8b", "needs a quant type"),
])
def test_bad_shapes(spec: str, message: str) -> None:
    from engine.errors import ConfigError
    from engine.model.memory.shapes import parse_shape

    with pytest.raises(ConfigError, match=message):
        parse_shape(spec)


# -- the plan ---------------------------------------------------------------------

GiB = 1024**3


def _plan(spec: str, kind: str, gib: float, **request):
    from engine.model.memory.budget import Budget
    from engine.model.memory.planner import PlanRequest, plan_memory
    from engine.model.memory.shapes import parse_shape, shape_header

    budget = Budget(kind, "CUDA0" if kind == "gpu" else "CPU", int(gib * GiB), "given",
                    64 * GiB)
    return plan_memory(shape_header(*parse_shape(spec)), budget, PlanRequest(**request))


def test_70b_q4_k_m_in_36_gib_does_not_fit() -> None:
    plan = _plan("llama-3.1-70b:Q4_K_M", "unified", 36, n_ctx=8192)
    assert not plan.fits and plan.n_ctx == 8192 and plan.kv_type == "f16"
    assert plan.kv_bytes == 8192 * 327_680  # 2.5 GiB
    assert plan.pool_bytes > 42 * GiB  # 39.6 GiB of weights + KV + compute + reserve
    alts = {a.change: a for a in plan.alternatives}
    assert not alts["--ctx 256"].fits  # the weights alone are over the budget
    assert not alts["--kv-type q4_0"].fits
    assert not alts["a Q3_K_M file"].fits and alts["a Q2_K file"].fits


def test_70b_on_a_36_gib_gpu_is_a_partial_split() -> None:
    plan = _plan("llama-3.1-70b:Q4_K_M", "gpu", 36, n_ctx=8192)
    assert plan.fits and plan.n_gpu_layers == 65 and plan.output_on_gpu
    assert plan.gpu_layers == list(range(16, 80))  # the last layers go to the GPU
    assert plan.pool_bytes <= 36 * GiB * 0.95
    assert plan.buffers["KV CPU"] == 16 * 8192 * 4096  # 16 CPU layers x 4 KiB per token


def test_quantized_kv_is_chosen_only_when_it_makes_it_fit() -> None:
    roomy = _plan("llama-3.1-8b:Q4_K_M", "gpu", 16, n_ctx=65536)
    tight = _plan("llama-3.1-8b:Q4_K_M", "gpu", 12, n_ctx=65536)
    assert roomy.kv_type == "f16" and roomy.n_gpu_layers == 33
    assert tight.kv_type == "q8_0" and tight.n_gpu_layers == 33 and tight.flash_attn
    forced = _plan("llama-3.1-8b:Q4_K_M", "gpu", 12, n_ctx=65536, kv_type="f16")
    assert forced.kv_type == "f16" and forced.n_gpu_layers < 33


def test_context_is_padded_and_long_contexts_warn(gemma_path: Path) -> None:
    plan = _plan("gemma-3-270m:Q4_K_M", "cpu", 8, n_ctx=1000)
    assert plan.n_ctx == 1024 and not plan.warnings
    long = _plan("gemma-3-270m:Q4_K_M", "cpu", 8, n_ctx=40000)
    assert long.n_ctx == 40192
    assert "larger than the 32768 tokens the model was trained on" in long.warnings[0]


def test_unknown_architecture_is_a_clear_error(tmp_path: Path) -> None:
    from gguf import GGUFWriter

    from engine.errors import ModelFileError
    from engine.model.memory.budget import detect_budget
    from engine.model.memory.planner import plan_memory

    path = tmp_path / "foo.gguf"
    writer = GGUFWriter(str(path), "foo-arch")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelFileError, match="cannot plan for architecture 'foo-arch'"):
        plan_memory(read_gguf_header(path), detect_budget("8GiB"))


def test_unparseable_budget() -> None:
    from engine.errors import ConfigError
    from engine.model.memory.budget import detect_budget

    with pytest.raises(ConfigError, match="not a size: 'lots'"):
        detect_budget("lots")
    assert detect_budget("36 GB").total_bytes == 36 * 1000**3


def test_planned_vs_measured_on_cpu(gemma_path: Path) -> None:
    """The plan's buffers against what llama.cpp logs allocating: within 10% in all."""
    from engine.config import ModelConfig
    from engine.model.loader import load_model

    for config in (ModelConfig(n_ctx=2048), ModelConfig(n_ctx=4096, kv_type="q8_0",
                                                         n_ubatch=256)):
        lm = load_model(config)
        try:
            planned, measured = lm.memory
            assert planned.stage == "planned" and measured.stage == "loaded"
            ratio = measured.total_bytes / planned.total_bytes
            assert 0.9 <= ratio <= 1.1, (ratio, planned.buffers, measured.buffers)
            # llama.cpp logs MiB to two decimals
            assert measured.buffers["KV CPU"] == pytest.approx(planned.buffers["KV CPU"], rel=1e-3)
            assert measured.rss_bytes and measured.rss_bytes > 0
            assert lm.info.kv_type == config.kv_type.replace("auto", "f16")
        finally:
            lm.close()
