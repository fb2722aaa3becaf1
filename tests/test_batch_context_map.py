"""The ``context`` event in parallel mode: each reply's map comes from its own sequence's
window, at the moments the single-sequence path sends one (after an eviction, before
``done``), with the same spans for the same conversation. The real bundled model."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from engine.api import ChatMessage
from engine.backends.local import LocalEngine
from engine.config import ModelConfig, SamplingConfig, SpeculativeConfig
from engine.events import (
    ContextMap,
    Done,
    Event,
    Eviction,
    PromptEvaluated,
    PromptTruncated,
    TokenChunk,
)
from tests.conftest import chat_request

SHORT = SamplingConfig(temperature=0.0, max_tokens=8, seed=0)
OFF = SpeculativeConfig(mode="off")


def say(role: str, text: str) -> ChatMessage:
    return ChatMessage(role=role, content=text)  # type: ignore[arg-type]


HISTORY = [say("system", "Be brief."), say("user", "Name a colour. " + "word " * 90),
           say("assistant", "Blue is a colour."),
           say("user", "And another. " + "more " * 120)]
"""About 250 tokens: in a 256-token window, the oldest turn goes to leave room for
the reply (a prompt eviction after the system prompt)."""
CUT = [say("user", "Summarize this. " + "lorem ipsum " * 200)]
"""A message longer than the window: its own first tokens are cut."""


async def collect(stream: object) -> list[Event]:
    return [event async for event in stream]  # type: ignore[attr-defined]


def logical(ev: Eviction) -> tuple[int, int, str]:
    start = ev.kept_tokens + ev.evicted_total - ev.evicted_tokens
    return start, start + ev.evicted_tokens, ev.reason


def plain(events: list[Event], kind: type[Event]) -> list[dict[str, Any]]:
    return [e.model_dump(exclude={"ts"}) for e in events if isinstance(e, kind)]


async def three_turns(config: ModelConfig) -> list[list[Event]]:
    """A conversation whose prompt is cut to fit, its next turn (cut again), and a
    message cut itself."""
    engine = LocalEngine(config, SHORT, speculative=OFF)
    await engine.start()
    try:
        first = await collect(engine.chat(chat_request(HISTORY, ignore_eos=True)))
        done = first[-1]
        assert isinstance(done, Done)
        turn = [*HISTORY, say("assistant", done.text), say("user", "Thanks. " + "again " * 60)]
        second = await collect(engine.chat(chat_request(turn, ignore_eos=True)))
        cut = await collect(engine.chat(chat_request(CUT, ignore_eos=True)))
        return [first, second, cut]
    finally:
        await engine.close()


@pytest.mark.parametrize("layout", ["shared", "split"])
async def test_a_parallel_reply_maps_its_window_as_the_single_path_does(
        default_path: Path, layout: str) -> None:
    """A 256-token window either way: the whole pool of 256 cells (shared), or one of
    two streams of 256 (split)."""
    single = await three_turns(ModelConfig(path=default_path, n_ctx=256))
    batch = await three_turns(ModelConfig(path=default_path, n_ctx=256 if layout == "shared"
                                          else 512, parallel=2, kv_layout=layout))
    for alone, together in zip(single, batch, strict=True):
        assert isinstance(alone[-1], Done) and isinstance(together[-1], Done)
        assert together[-1].text == alone[-1].text  # the same conversation next turn
        evictions = [e for e in together if isinstance(e, Eviction)]
        assert [e.reason for e in evictions] == ["prompt"]
        assert plain(together, ContextMap) == plain(alone, ContextMap)
        assert plain(together, PromptTruncated) == plain(alone, PromptTruncated)
        maps = [e for e in together if isinstance(e, ContextMap)]
        # One map once the cut prompt is read, one right before done.
        assert len(maps) == 2 and together[-2] is maps[-1]
        after = together.index(evictions[0])
        read = next(e for e in together[after:] if isinstance(e, PromptEvaluated))
        assert together[together.index(read) + 1] is maps[0]
        assert maps[0].cached_end == read.prompt_tokens + evictions[0].evicted_total
    first, second, cut = batch
    # The next turn goes on in the same window: its record keeps the first turn's
    # eviction with its reason (not "earlier"), then its own.
    kept = next(e for e in first if isinstance(e, Eviction))
    own = next(e for e in second if isinstance(e, Eviction))
    last = second[-2]
    assert isinstance(last, ContextMap)
    assert last.evicted == [logical(kept), logical(own)]
    assert [role for role, _, _ in last.spans] == ["system", "user", "assistant", "user",
                                                   "assistant", "user", "assistant"]
    # The first message is gone whole; the system prompt is kept.
    _, start, end = last.spans[1]
    assert last.evicted[0][0] <= start and end <= last.evicted[-1][1]
    assert last.spans[0][2] <= last.n_keep
    note = next(e for e in cut if isinstance(e, PromptTruncated))
    assert cut[-2].cut == note.cut_tokens > 0  # type: ignore[union-attr]


async def test_each_reply_of_a_batch_maps_its_own_window_as_it_slides(
        default_path: Path) -> None:
    """Two conversations at once, one outgrowing its window (generation evictions);
    then N answers, each with its map."""
    engine = LocalEngine(ModelConfig(path=default_path, n_ctx=512, parallel=2,
                                     kv_layout="split"), SHORT, speculative=OFF)
    await engine.start()
    try:
        long = chat_request([say("user", "Tell me a story.")],
                            SHORT.model_copy(update={"max_tokens": 320}), ignore_eos=True)
        sliding, evicting = await asyncio.gather(
            collect(engine.chat(long)),
            collect(engine.chat(chat_request(HISTORY, ignore_eos=True))))
        answers = await collect(engine.answers(chat_request(HISTORY[:2]), 2))
    finally:
        await engine.close()
    evictions = [e for e in sliding if isinstance(e, Eviction)]
    assert evictions and {e.reason for e in evictions} == {"generation"}
    done = sliding[-1]
    assert isinstance(done, Done) and done.completion_tokens == 320
    prompt = done.prompt_tokens
    for k, ev in enumerate(evictions):
        # Right after each eviction: every eviction so far, and every token sent so far
        # in the cells (the next one is sampled, not decoded yet).
        at = sliding.index(ev)
        shown = sliding[at + 1]
        assert isinstance(shown, ContextMap) and shown.reply is None
        sent = sum(len(e.token_ids) for e in sliding[:at] if isinstance(e, TokenChunk))
        assert shown.spans[-1] == ("assistant", prompt, prompt + sent)
        assert shown.evicted == [logical(e) for e in evictions[:k + 1]]
        assert shown.cached_end == prompt + sent
    last = sliding[-2]
    assert isinstance(last, ContextMap)
    assert [role for role, _, _ in last.spans] == ["user", "assistant"]
    assert last.spans[-1] == ("assistant", prompt, prompt + 320)
    assert last.cached_end == prompt + 319  # the last token was sampled, never decoded
    # The other conversation's map is of its own messages and its own prompt eviction.
    other = evicting[-2]
    assert isinstance(other, ContextMap) and len(other.spans) == len(HISTORY) + 1
    assert other.evicted == [logical(e) for e in evicting if isinstance(e, Eviction)]
    # N answers: each its map, tagged with its answer, right before its done.
    for k in (0, 1):
        mine = [e for e in answers if getattr(e, "reply", None) == k]
        assert isinstance(mine[-1], Done) and isinstance(mine[-2], ContextMap)
        assert mine[-2].spans[-1] == ("assistant", mine[-1].prompt_tokens,
                                      mine[-1].prompt_tokens + mine[-1].completion_tokens)
