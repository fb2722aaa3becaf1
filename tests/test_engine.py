"""The engine without any UI, on the real bundled model through real llama.cpp."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from engine.api import ChatMessage
from engine.backends.local import LocalEngine
from engine.config import KVCacheConfig, ModelConfig, SamplingConfig, SpeculativeConfig
from engine.decode.generator import Generator
from engine.errors import EngineClosed, ModelFileError, PromptError
from engine.events import (
    Done,
    Error,
    Event,
    KVUsage,
    Progress,
    PromptEvaluated,
    TokenChunk,
    parse_event,
)
from engine.model.bundled import default_model_path
from tests.conftest import GREEDY, chat_request


def user(text: str) -> list[ChatMessage]:
    return [ChatMessage(role="user", content=text)]


async def collect(stream) -> list[Event]:
    return [event async for event in stream]


async def test_the_default_model_is_the_instruct_one_with_its_template(
        engine: LocalEngine) -> None:
    info = engine.info
    assert info is not None and info.path == str(default_model_path())
    assert (info.architecture, info.n_vocab) == ("llama", 49152)
    assert info.chat_format == "gguf-template"


async def test_model_loaded_reports_the_model(gemma_path: Path) -> None:
    eng = LocalEngine(ModelConfig(path=gemma_path, n_ctx=1024), GREEDY)
    await eng.start()
    info = eng.info
    await eng.close()
    assert info is not None
    assert info.architecture == "gemma3"
    assert info.backend == "CPU"
    assert info.n_ctx == 1024
    assert info.n_vocab == 262144
    assert info.chat_format == "gemma"
    # The default on a CPU (speculation on): a batch-invariant load with a q8_0 cache.
    assert info.batch_invariant and info.kv_type == "q8_0"
    # KV per token for Gemma 3 270M: 18 layers x 1 KV head x (256 + 256) dims, in q8_0
    # blocks of 32 values in 34 bytes
    assert info.kv_bytes == 18 * 1 * 512 * 34 // 32 * 1024
    # llama.cpp's own allocation (sliding-window layers at full size) matches the formula,
    # to the 0.01 MiB its log gives.
    assert abs(info.buffers["KV CPU"] - info.kv_bytes) <= 0.005 * 2**20
    assert info.buffers["compute CPU"] > 0 and info.buffers["model CPU_Mapped"] > 0


async def test_reply_streams_tokens_then_done(engine: LocalEngine) -> None:
    events = await collect(engine.chat(chat_request(user("Name three colours."), GREEDY)))
    kinds = [e.type for e in events]
    assert kinds[0] == "prompt" and kinds[1] == "kv" and kinds[-1] == "done"
    chunks = [e for e in events if isinstance(e, TokenChunk)]
    done = events[-1]
    assert isinstance(done, Done)
    assert done.completion_tokens >= 1
    assert sum(len(c.token_ids) for c in chunks) == done.completion_tokens
    assert "".join(c.text for c in chunks) == done.text
    assert done.finish_reason in ("stop", "length")
    assert done.prompt_tokens == done.evaluated_tokens  # a fresh cache reuses nothing
    assert done.ttft_s > 0
    # Time inside llama_decode is part of the decode span, never more; the prefill's
    # decodes (before the first token) are not in it.
    assert done.decode_s is not None
    assert 0 < done.decode_s <= done.total_s - done.ttft_s


async def test_greedy_is_deterministic(engine: LocalEngine) -> None:
    first = (await collect(engine.chat(chat_request(user("Tell me about rivers."), GREEDY))))[-1]
    second = (await collect(engine.chat(chat_request(user("Tell me about rivers."), GREEDY))))[-1]
    assert isinstance(first, Done) and isinstance(second, Done)
    assert first.text == second.text
    assert second.reused_tokens == second.prompt_tokens - 1  # the same prompt, from cache


async def test_a_fixed_seed_repeats_a_sampled_reply() -> None:
    # Fresh engines: a prompt evaluated in one batch and one evaluated from cache can
    # differ in the last bits of the logits, which sampling at temperature 1 can see.
    sampled = SamplingConfig(temperature=1.0, seed=1234, max_tokens=16)
    texts = []
    for _ in range(2):
        eng = LocalEngine(ModelConfig(n_ctx=256), sampled)
        await eng.start()
        texts.append((await collect(eng.chat(chat_request(user("Write a word.")))))[-1].text)
        await eng.close()
    assert texts[0] == texts[1] and texts[0]


async def test_second_turn_evaluates_only_new_tokens(engine: LocalEngine) -> None:
    history = [ChatMessage(role="system", content="Be brief."), *user("What is rain?")]
    first = (await collect(engine.chat(chat_request(history, GREEDY))))[-1]
    assert isinstance(first, Done)
    history += [ChatMessage(role="assistant", content=first.text), *user("And snow?")]
    events = await collect(engine.chat(chat_request(history, GREEDY)))
    prompt = next(e for e in events if isinstance(e, PromptEvaluated))
    # On "stop" every reply token went through the cache; on "length" the last one
    # was sampled but not yet evaluated.
    in_cache = first.prompt_tokens + first.completion_tokens
    if first.finish_reason == "length":
        in_cache -= 1
    assert prompt.reused_tokens == in_cache
    assert prompt.evaluated_tokens == prompt.prompt_tokens - in_cache
    # What is new: end of the reply's turn, the new user turn, the model's turn marker.
    assert 0 < prompt.evaluated_tokens < 20


async def test_cancel_stops_within_a_token(engine: LocalEngine) -> None:
    long_run = SamplingConfig(temperature=0.0, max_tokens=2000)
    seen = 0
    cancelled_at = None
    async for event in engine.chat(chat_request(user("Count upward forever."), long_run,
                                                ignore_eos=True)):
        if isinstance(event, TokenChunk):
            seen += len(event.token_ids)
            if cancelled_at is None and seen >= 3:
                engine.cancel()
                cancelled_at = seen
        if isinstance(event, Done):
            done = event
    assert done.finish_reason == "cancelled"
    assert cancelled_at is not None
    # The engine checks the flag before every token; tokens it produced while this
    # consumer was still reading the first ones may still arrive (a margin for a
    # loaded machine), but nothing close to the 2000 asked for.
    assert done.completion_tokens <= cancelled_at + 10
    assert done.completion_tokens == seen
    # The engine is usable right after.
    after = (await collect(engine.chat(chat_request(user("Hello"), GREEDY))))[-1]
    assert isinstance(after, Done)


async def test_leaving_the_stream_early_cancels(engine: LocalEngine) -> None:
    stream = engine.chat(chat_request(user("Write a long story."), SamplingConfig(max_tokens=2000),
                                      ignore_eos=True))
    async for event in stream:
        if isinstance(event, TokenChunk):
            break
    await stream.aclose()
    # The next reply is not stuck behind 2000 tokens of the abandoned one.
    after = await asyncio.wait_for(collect(engine.chat(chat_request(user("Hi"), GREEDY))),
                                   timeout=60)
    assert isinstance(after[-1], Done)


async def test_ignore_eos_generates_exactly_max_tokens(engine: LocalEngine) -> None:
    events = await collect(engine.chat(chat_request(
        user("Hi"), SamplingConfig(temperature=0, max_tokens=40), ignore_eos=True)))
    done = events[-1]
    assert isinstance(done, Done)
    assert done.completion_tokens == 40 and done.finish_reason == "length"
    progress = [e for e in events if isinstance(e, Progress)]
    assert [p.completion_tokens for p in progress] == [16, 32]
    # A rate was measured at each point (its value is machine speed: not tested here).
    measured = [done.tokens_per_s, *(p.tokens_per_s for p in progress)]
    assert all(rate > 0 for rate in measured)


async def test_prompt_longer_than_context_is_an_error_event_without_eviction() -> None:
    eng = LocalEngine(ModelConfig(n_ctx=256), GREEDY, KVCacheConfig(evict=False))
    info = await eng.start()
    assert info.n_ctx == 256
    try:
        events = await collect(eng.chat(chat_request(user("word " * 400), GREEDY)))
        assert len(events) == 1 and isinstance(events[0], Error)
        assert events[0].code == "prompt_too_long"
        assert "context holds 256" in events[0].message
        ok = (await collect(eng.chat(chat_request(user("Hi"), GREEDY))))[-1]
        assert isinstance(ok, Done)
    finally:
        await eng.close()


async def test_full_context_finishes_with_context_full_without_eviction() -> None:
    eng = LocalEngine(ModelConfig(n_ctx=256), GREEDY, KVCacheConfig(evict=False))
    await eng.start()
    try:
        events = await collect(eng.chat(chat_request(user("Hi"), SamplingConfig(temperature=0,
                                                                                max_tokens=500),
                                                     ignore_eos=True)))
        done = events[-1]
        assert isinstance(done, Done) and done.finish_reason == "context_full"
        kv = [e for e in events if isinstance(e, KVUsage)][-1]
        assert kv.used_cells == 256
    finally:
        await eng.close()


@pytest.mark.parametrize("text", ["", "   \n\t"])
async def test_empty_prompt_is_refused(engine: LocalEngine, text: str) -> None:
    with pytest.raises(PromptError, match="empty"):
        engine.chat(chat_request(user(text)))


async def test_non_utf8_prompt_is_refused(engine: LocalEngine) -> None:
    raw = b"caf\xe9 au lait".decode("utf-8", errors="surrogateescape")
    with pytest.raises(PromptError, match=r"not valid UTF-8 .*0xe9"):
        engine.chat(chat_request(user(raw)))


@pytest.mark.parametrize("kind, message", [
    ("missing", "not found"),
    ("directory", "is a directory"),
    ("empty", "is empty"),
    ("text", "not a GGUF model file"),
    ("truncated", "truncated"),
    ("header_cut", "truncated"),
    ("garbage", "GGUF"),
])
async def test_bad_model_files_are_refused_before_llama_cpp(bad_files, kind: str,
                                                            message: str) -> None:
    eng = LocalEngine(ModelConfig(path=bad_files[kind]))
    with pytest.raises(ModelFileError, match=message):
        await eng.start()
    await eng.close()


async def test_closed_engine_refuses_work() -> None:
    eng = LocalEngine(ModelConfig(n_ctx=128))
    await eng.start()
    await eng.close()
    with pytest.raises(EngineClosed):
        eng.chat(chat_request(user("Hi")))


def test_events_round_trip_through_json() -> None:
    done = Done(finish_reason="stop", prompt_tokens=3, reused_tokens=0, evaluated_tokens=3,
                completion_tokens=2, ttft_s=0.1, prefill_tokens_per_s=30.0, tokens_per_s=40.0,
                total_s=0.2, text="hi")
    again = parse_event(done.model_dump_json())
    assert again == done and again.type == "done"


async def test_valid_gguf_of_an_unknown_architecture_is_a_load_error(tmp_path) -> None:
    import numpy as np
    from gguf import GGUFWriter

    path = tmp_path / "alien.gguf"
    writer = GGUFWriter(str(path), "alienformer")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    eng = LocalEngine(ModelConfig(path=path))
    # A file llama.cpp refuses is a bad model file (exit 2 in the CLI), as one kvchat
    # refuses is.
    with pytest.raises(ModelFileError, match=r"cannot load .*alienformer"):
        await eng.start()
    await eng.close()


def test_decode_and_prompt_thread_counts_reach_llama_cpp() -> None:
    import llama_cpp

    from engine.model.loader import load_model

    lm = load_model(ModelConfig(n_ctx=256, n_threads=1, n_threads_batch=2))
    try:
        assert llama_cpp.llama_n_threads(lm.ctx.ctx) == 1
        assert llama_cpp.llama_n_threads_batch(lm.ctx.ctx) == 2
    finally:
        lm.close()
    lm = load_model(ModelConfig(n_ctx=256, n_threads=1))  # prompts follow decoding
    try:
        assert llama_cpp.llama_n_threads_batch(lm.ctx.ctx) == 1
    finally:
        lm.close()


async def test_prompts_run_on_the_prompt_threads_and_verification_on_its_own() -> None:
    import llama_cpp

    # Between prompts the context holds the verification count; a prompt switches to
    # its own count and back.
    eng = LocalEngine(ModelConfig(n_ctx=512, n_threads=1, n_threads_batch=2,
                                  n_threads_verify=1),
                      SamplingConfig(temperature=0, max_tokens=48), KVCacheConfig(),
                      SpeculativeConfig(mode="prompt-lookup"))
    await eng.start()
    seen: list[tuple[int, int]] = []  # (rows, llama.cpp's thread count for batches)

    def watch(gen: Generator) -> None:
        decode = gen.lm.ctx.decode

        def counted(batch: Any) -> None:
            seen.append((batch.n_tokens(), llama_cpp.llama_n_threads_batch(gen.lm.ctx.ctx)))
            decode(batch)
        gen.lm.ctx.decode = counted  # type: ignore[method-assign]

    try:
        await eng.run_on_engine_thread(watch)
        prompt = "Repeat this line twice: one two three four five six seven eight nine ten."
        events = await collect(eng.chat(chat_request(user(prompt), ignore_eos=True)))
        done = events[-1]
        assert isinstance(done, Done) and done.drafted_tokens
        assert seen[0][0] > 1 and seen[0][1] == 2  # the prompt, in one batch
        assert {threads for rows, threads in seen[1:] if rows > 1} == {1}
    finally:
        await eng.close()
