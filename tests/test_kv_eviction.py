"""Sliding-window KV eviction on the real model: the cache, the engine's token list
and the events must agree after every eviction."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import llama_cpp
import pytest

from engine.api import ChatMessage
from engine.backends.local import LocalEngine
from engine.config import KVCacheConfig, ModelConfig, SamplingConfig, SpeculativeConfig
from engine.decode.generator import Generator
from engine.decode.kv_window import window
from engine.events import Done, Event, Eviction, KVUsage, PromptEvaluated, PromptTruncated
from tests.conftest import chat_request

SYSTEM = ChatMessage(role="system", content="You are a terse assistant who answers in one line.")
LONG = SamplingConfig(temperature=0.0, max_tokens=600, seed=0)


@dataclass
class CacheView:
    pos_min: int
    pos_max: int
    tokens: list[int]
    n_keep: int
    dropped: int
    rendered: list[int]


def _view(gen: Generator) -> CacheView:
    mem, kv = gen.lm.ctx.memory, gen.cache.state
    return CacheView(llama_cpp.llama_memory_seq_pos_min(mem, 0),
                     llama_cpp.llama_memory_seq_pos_max(mem, 0), list(kv.tokens),
                     kv.n_keep, kv.dropped, list(kv.rendered_tokens))


async def collect(stream: AsyncIterator[Event]) -> list[Event]:
    return [event async for event in stream]


def convo(*texts: str) -> list[ChatMessage]:
    roles = ("user", "assistant")
    return [SYSTEM, *(ChatMessage(role=roles[i % 2], content=t) for i, t in enumerate(texts))]


@pytest.fixture
async def small() -> AsyncIterator[LocalEngine]:
    # Plain decoding, whose evictions have exact shapes (one token of room at a time);
    # speculation across evictions is tested in test_speculative.py.
    eng = LocalEngine(ModelConfig(n_ctx=256), LONG, KVCacheConfig(),
                      SpeculativeConfig(mode="off"))
    await eng.start()
    yield eng
    await eng.close()


def assert_in_step(view: CacheView) -> None:
    # Positions 0..n-1 hold exactly the engine's tokens: nothing missing, nothing stale.
    assert view.pos_min == 0
    assert view.pos_max == len(view.tokens) - 1
    # The cache holds the conversation's window, except perhaps the last sampled
    # token, which is only decoded when the next turn's prompt needs it.
    expected = window(view.rendered, view.n_keep, view.dropped)
    assert view.tokens == expected[:len(view.tokens)]
    assert len(expected) - len(view.tokens) <= 1


async def test_reply_longer_than_the_context_slides_the_window(small: LocalEngine) -> None:
    events = await collect(small.chat(chat_request(convo("Count upwards from one."),
                                                   ignore_eos=True)))
    done = events[-1]
    assert isinstance(done, Done)
    assert done.finish_reason == "length" and done.completion_tokens == 600
    evictions = [e for e in events if isinstance(e, Eviction)]
    assert len(evictions) >= 3 and done.evictions == len(evictions)
    view = await small.run_on_engine_thread(_view)
    assert view.n_keep > 4  # the system prompt is kept, not only the sink tokens
    for ev in evictions:
        assert ev.reason == "generation"
        assert ev.start == ev.kept_tokens == view.n_keep
        assert ev.used_before == 256 and ev.used_after == 256 - ev.evicted_tokens
        assert ev.shifted_tokens == ev.used_before - ev.end
        assert ev.shift_tokens == 1
    assert evictions[-1].evicted_total == view.dropped == done.evicted_tokens
    assert_in_step(view)
    # The kept prefix is the conversation's own first tokens, untouched by the slides.
    assert view.tokens[:view.n_keep] == view.rendered[:view.n_keep]
    kv = [e for e in events if isinstance(e, KVUsage)]
    assert max(e.used_cells for e in kv) <= 256
    assert kv[-1].kept_cells == view.n_keep and kv[-1].evicted_total == view.dropped


async def test_prefix_reuse_after_eviction_evaluates_only_new_tokens(
        small: LocalEngine) -> None:
    first = await collect(small.chat(chat_request(
        convo("Say hello."), ignore_eos=True,
        sampling=SamplingConfig(temperature=0, max_tokens=300))))
    reply = first[-1]
    assert isinstance(reply, Done) and reply.evictions >= 1
    before = await small.run_on_engine_thread(_view)
    second = await collect(small.chat(chat_request(
        convo("Say hello.", reply.text, "And now goodbye."),
        SamplingConfig(temperature=0, max_tokens=8))))
    done = second[-1]
    assert isinstance(done, Done), second
    after = await small.run_on_engine_thread(_view)
    prompt = next(e for e in second if isinstance(e, PromptEvaluated))
    # Logical tokens of this turn's prompt, minus those of the last turn: the new ones.
    new_tokens = len(after.rendered) - done.completion_tokens - len(before.rendered)
    # ... plus the last reply token, sampled but not yet decoded when the turn ended.
    undecoded = len(window(before.rendered, before.n_keep, before.dropped)) - len(before.tokens)
    assert prompt.evaluated_tokens == new_tokens + undecoded
    assert prompt.reused_tokens > 100
    assert_in_step(after)


async def test_a_prompt_longer_than_the_context_is_cut_with_a_note(
        small: LocalEngine) -> None:
    text = " ".join(f"item{i}" for i in range(400))
    events = await collect(small.chat(chat_request(
        convo(text), SamplingConfig(temperature=0, max_tokens=8))))
    notes = [e for e in events if isinstance(e, PromptTruncated)]
    assert len(notes) == 1 and notes[0].cut_tokens > 0
    assert "first" in notes[0].message and "256" in notes[0].message
    prompt = next(e for e in events if isinstance(e, PromptEvaluated))
    assert prompt.prompt_tokens <= 256 - 8
    assert isinstance(events[-1], Done)
    assert_in_step(await small.run_on_engine_thread(_view))


async def test_cancel_during_an_eviction_heavy_reply_leaves_the_cache_in_step(
        small: LocalEngine) -> None:
    seen = 0
    events: list[Event] = []
    async for event in small.chat(chat_request(
            convo("Write a long story."), ignore_eos=True,
            sampling=SamplingConfig(temperature=0, max_tokens=5000))):
        events.append(event)
        if isinstance(event, Eviction):
            seen += 1
            if seen == 3:
                small.cancel()
    done = events[-1]
    assert isinstance(done, Done) and done.finish_reason == "cancelled"
    view = await small.run_on_engine_thread(_view)
    assert_in_step(view)
    # The conversation goes on from where it was cancelled.
    again = await collect(small.chat(chat_request(
        convo("Write a long story.", done.text, "Thanks."),
        SamplingConfig(temperature=0, max_tokens=4))))
    assert isinstance(again[-1], Done)
    assert_in_step(await small.run_on_engine_thread(_view))


async def test_without_filling_the_context_the_manager_changes_nothing() -> None:
    async def two_turns(policy: KVCacheConfig) -> list[list[int]]:
        eng = LocalEngine(ModelConfig(n_ctx=1024), LONG, policy)
        await eng.start()
        try:
            greedy = SamplingConfig(temperature=0, max_tokens=40)
            first = await collect(eng.chat(chat_request(convo("Name three colours."), greedy)))
            a = first[-1]
            assert isinstance(a, Done)
            second = await collect(eng.chat(chat_request(convo("Name three colours.", a.text,
                                                               "And three animals?"), greedy)))
            assert not any(isinstance(e, Eviction) for e in first + second)
            return [[t for e in events if e.type == "token" for t in e.token_ids]
                    for events in (first, second)]
        finally:
            await eng.close()

    assert await two_turns(KVCacheConfig()) == await two_turns(KVCacheConfig(evict=False))


async def test_long_history_is_windowed_at_a_turn_boundary_without_a_cut_note(
        small: LocalEngine) -> None:
    texts: list[str] = []
    for i in range(12):
        texts += [f"Tell me fact number {i} about the sea.",
                  f"Fact {i}: " + "the sea is deep, wide and cold. " * 6]
    events = await collect(small.chat(chat_request(convo(*texts, "And the last fact?"),
                                                   SamplingConfig(temperature=0, max_tokens=8))))
    assert isinstance(events[-1], Done), events[-1]
    # Old turns went, the new message is whole: no note for the user.
    assert not any(isinstance(e, PromptTruncated) for e in events)
    evictions = [e for e in events if isinstance(e, Eviction)]
    assert len(evictions) == 1
    ev = evictions[0]
    assert ev.reason == "prompt" and ev.at_turn_boundary
    assert ev.used_before == 0 and ev.shifted_tokens == 0  # nothing was cached yet
    view = await small.run_on_engine_thread(_view)
    assert view.n_keep > 4
    assert_in_step(view)


@pytest.mark.parametrize("words", [200, 210])
async def test_a_next_turn_cut_up_to_its_header_gets_no_cut_note(
        small: LocalEngine, words: int) -> None:
    """The window drops the whole last turn and, with it, the last reply's end of turn
    (never in the cells) and part of the new message's header: history, not the
    message, so no note. (A note saying 1 or 3 tokens were cut came here once.)"""
    greedy = SamplingConfig(temperature=0, max_tokens=24, seed=0)
    first = [ChatMessage(role="system", content="Be brief."),
             ChatMessage(role="user", content="Name a colour. " + "word " * 20)]
    done = (await collect(small.chat(chat_request(first, greedy, ignore_eos=True))))[-1]
    assert isinstance(done, Done)
    turn = [*first, ChatMessage(role="assistant", content=done.text),
            ChatMessage(role="user", content="Thanks. " + "again " * words)]
    events = await collect(small.chat(chat_request(turn, greedy, ignore_eos=True)))
    assert isinstance(events[-1], Done)
    (ev,) = [e for e in events if isinstance(e, Eviction)]
    assert ev.reason == "prompt" and ev.end > ev.used_before  # past the cached reply
    assert not any(isinstance(e, PromptTruncated) for e in events)
