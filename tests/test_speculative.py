"""Speculative decoding: drafts, verification on the real model, the controller."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from engine.api import ChatMessage
from engine.backends.local import LocalEngine
from engine.config import KVCacheConfig, ModelConfig, SamplingConfig, SpeculativeConfig
from engine.decode.drafting import DrafterName, PromptLookup
from engine.decode.speculation import (
    COOLDOWN_TOKENS,
    PLAIN_SAMPLES,
    RECENT_ROUNDS,
    YARDSTICK_EVERY,
    SpecController,
)
from engine.errors import ConfigError, ModelLoadError
from engine.events import Done, Event, Eviction, SpecStats
from engine.model.memory.shapes import parse_shape
from engine.model.memory.synth import write_synthetic
from tests.conftest import chat_request
from tests.test_kv_eviction import _view, assert_in_step

ROOT = Path(__file__).resolve().parent.parent
REPEAT = ("Repeat this text exactly, twice:\n\nThe keeper climbed the stairs of the "
          "lighthouse every evening, lit the lamp, wound the clock and wrote one line in "
          "the logbook: all quiet on the sea tonight.")


def test_prompt_lookup_drafts_what_followed_the_last_occurrence() -> None:
    pl = PromptLookup(min_ngram=2, max_ngram=3)
    pl.begin([1, 2, 3, 4, 5, 9, 1, 2, 3])
    assert pl.draft([], 0, 3) == [4, 5, 9]
    pl.extend([7])  # the suffix (3, 7) never occurred: no draft
    assert pl.draft([], 0, 3) == []
    # The same conversation grown by one turn keeps its index and extends it.
    pl.begin([1, 2, 3, 4, 5, 9, 1, 2, 3, 7, 1, 2])
    assert pl.draft([], 0, 2) == [3, 7]  # the latest occurrence of (1, 2) wins


def test_a_match_running_into_the_end_drafts_on_as_the_text_repeats() -> None:
    # The last occurrence of (7, 8) is two tokens back: the text repeats with period 2,
    # so the draft goes on past the end (an overlapping copy) instead of stopping at it.
    pl = PromptLookup(min_ngram=2, max_ngram=2)
    pl.begin([1, 7, 8, 7, 8])
    assert pl.draft([], 0, 5) == [7, 8, 7, 8, 7]


def test_even_rows_keep_verification_batches_even() -> None:
    # pending token + drafts: an odd draft makes an even batch, the cheap shape for
    # llama.cpp's CPU matmul; a short draft of even length loses its last token.
    ctl = SpecController(ScriptedDrafter(), SpeculativeConfig(max_draft=12), even_rows=True)
    ctl.begin_reply([5, 6])
    for _ in range(PLAIN_SAMPLES):
        ctl.after_plain(0.010, 7)
    lengths = []
    for accepted_all in (True, True, True, False, True):
        drafts = ctl.propose([], 0)
        lengths.append(len(drafts))
        ctl.after_round(0.005, len(drafts), len(drafts) if accepted_all else 1,
                        [7] * (len(drafts) + 1))
    assert all(n % 2 == 1 for n in lengths) and max(lengths) == 11
    assert ctl.shaped([1, 2, 3, 4]) == [1, 2, 3] and ctl.shaped([1, 2, 3]) == [1, 2, 3]


class ScriptedDrafter:
    """Proposes a fixed token: a drafter that is always wrong for the controller."""

    name: DrafterName = "prompt-lookup"

    def __init__(self) -> None:
        self.seen: list[int] = []

    def begin(self, history: Sequence[int]) -> None:
        self.seen = list(history)

    def extend(self, tokens: Sequence[int]) -> None:
        self.seen.extend(tokens)

    def draft(self, cache: Sequence[int], pending: int, n: int) -> list[int]:
        return [self.seen[-1]] * n  # predicts a repeat of the last token

    def close(self) -> None:
        pass


def test_controller_switches_off_when_rounds_cost_time_and_back_on_when_text_repeats(
) -> None:
    ctl = SpecController(ScriptedDrafter(), SpeculativeConfig(max_draft=8))
    ctl.begin_reply([5, 6])
    for _ in range(PLAIN_SAMPLES):  # no yardstick yet: plain steps measure it first
        assert ctl.propose([5], 6) == []
        assert ctl.after_plain(0.010, 7) is None
    notes = []
    for token in range(100, 110):  # every round: 2x a plain step, nothing accepted
        drafts = ctl.propose([], 0)
        if not drafts:
            break
        notes.append(ctl.after_round(0.020, len(drafts), 0, [token]))
    assert not ctl.active
    switch = notes[-1]
    assert not switch.active and "costing time" in switch.reason and switch.speedup < 1
    assert switch.acceptance == 0 and switch.drafted > 0
    # Off, it keeps shadow-drafting for free; a run of repeats turns it back on.
    # Not at once, though: a cool-down keeps text that looks repetitive but does not
    # pay from flapping it on and off.
    resumed = None
    for step in range(COOLDOWN_TOKENS):
        assert ctl.propose([], 0) == []
        resumed = ctl.after_plain(0.010, ctl.drafter.seen[-1])
        assert (resumed is None) == (step < COOLDOWN_TOKENS - 1)
    assert ctl.active and resumed is not None and "repeats again" in resumed.reason
    assert ctl.propose([], 0) != []


class EchoDrafter(ScriptedDrafter):
    """Always right: for the controller, text that repeats forever."""


def test_one_slow_step_neither_switches_speculation_off_nor_makes_it_look_good() -> None:
    ctl = SpecController(EchoDrafter(), SpeculativeConfig(max_draft=4))
    ctl.begin_reply([5, 6])
    # The first plain step is slowed five-fold (a page fault, a preempted thread): the
    # yardstick is the median, so it does not make every later round look like a win.
    for seconds in (0.050, 0.010, 0.010):
        assert ctl.propose([], 0) == []
        ctl.after_plain(seconds, 7)
    assert ctl.plain_s == pytest.approx(0.010)
    notes = []
    for i in range(3 * RECENT_ROUNDS):
        drafts = ctl.propose([], 0)
        if not drafts:  # the yardstick's own plain step
            ctl.after_plain(0.010, 7)
            continue
        # A round of 1 + n rows costs 0.012 s and emits all n drafts plus one token:
        # a speedup of well over 1; one of them is slowed ten-fold.
        seconds = 0.120 if i == RECENT_ROUNDS else 0.012
        notes.append(ctl.after_round(seconds, len(drafts), len(drafts), [7] * (len(drafts) + 1)))
    assert ctl.active and not any(n.reason for n in notes)
    assert all(n.speedup > 1.5 for n in notes)


def test_while_on_a_plain_step_now_and_then_keeps_the_yardstick_current() -> None:
    ctl = SpecController(EchoDrafter(), SpeculativeConfig(max_draft=4))
    ctl.begin_reply([5, 6])
    for _ in range(PLAIN_SAMPLES):
        ctl.propose([], 0)
        ctl.after_plain(0.010, 7)
    plain_steps = []
    for i in range(8 * YARDSTICK_EVERY):
        drafts = ctl.propose([], 0)
        if not drafts:
            plain_steps.append(i)
            ctl.after_plain(0.020, 7)  # the cache grew: plain steps now cost more
            continue
        ctl.after_round(0.030, len(drafts), len(drafts), [7] * (len(drafts) + 1))
    assert len(plain_steps) >= 7 and ctl.plain_s == pytest.approx(0.020)


async def collect(stream: AsyncIterator[Event]) -> list[Event]:
    return [event async for event in stream]


async def greedy_tokens(mode: str, prompt: str, n: int, n_ctx: int = 1024,
                        in_graph: str = "auto", adaptive: bool = True,
                        invariant: str = "on",
                        ) -> tuple[list[int], list[Event], LocalEngine]:
    # Plain and speculative runs load the same way (batch-invariant by default here),
    # so their outputs can differ only through speculation.
    eng = LocalEngine(ModelConfig(n_ctx=n_ctx, greedy_in_graph=in_graph,  # type: ignore[arg-type]
                                  batch_invariant=invariant),  # type: ignore[arg-type]
                      SamplingConfig(temperature=0, max_tokens=n),
                      KVCacheConfig(),
                      SpeculativeConfig(mode=mode, adaptive=adaptive))  # type: ignore[arg-type]
    await eng.start()
    events = await collect(eng.chat(chat_request([ChatMessage(role="user", content=prompt)],
                                                 ignore_eos=True)))
    tokens = [t for e in events if e.type == "token" for t in e.token_ids]
    return tokens, events, eng


async def test_rejected_drafts_leave_the_cache_and_stats_add_up() -> None:
    _, events, eng = await greedy_tokens("prompt-lookup", REPEAT, 160)
    try:
        done = events[-1]
        assert isinstance(done, Done) and done.completion_tokens == 160
        assert done.drafted_tokens > done.accepted_tokens > 0
        stats = [e for e in events if isinstance(e, SpecStats)]
        assert stats[-1].drafted == done.drafted_tokens
        assert stats[-1].accepted == done.accepted_tokens
        assert stats[-1].acceptance == pytest.approx(done.accepted_tokens / done.drafted_tokens)
        # Positions past the engine's tokens would be rejected drafts left behind.
        assert_in_step(await eng.run_on_engine_thread(_view))
    finally:
        await eng.close()


async def test_speculation_across_evictions_stays_in_step() -> None:
    _, events, eng = await greedy_tokens("prompt-lookup", REPEAT, 400, n_ctx=256)
    try:
        assert any(isinstance(e, Eviction) for e in events)
        done = events[-1]
        assert isinstance(done, Done) and done.completion_tokens == 400
        assert done.drafted_tokens > 0
        assert_in_step(await eng.run_on_engine_thread(_view))
    finally:
        await eng.close()


async def test_cancel_during_verification_rounds_leaves_the_cache_in_step() -> None:
    eng = LocalEngine(ModelConfig(n_ctx=512), SamplingConfig(temperature=0, max_tokens=3000),
                      KVCacheConfig(), SpeculativeConfig(mode="prompt-lookup"))
    await eng.start()
    try:
        events: list[Event] = []
        async for event in eng.chat(chat_request([ChatMessage(role="user", content=REPEAT)],
                                                 ignore_eos=True)):
            events.append(event)
            if isinstance(event, SpecStats) and event.rounds >= 8:
                eng.cancel()
        done = events[-1]
        assert isinstance(done, Done) and done.finish_reason == "cancelled"
        assert_in_step(await eng.run_on_engine_thread(_view))
    finally:
        await eng.close()


async def test_draft_model_with_another_vocabulary_is_refused(tmp_path: Path) -> None:
    shape, mix = parse_shape("tiny-llama:Q8_0")
    draft = tmp_path / "tiny.gguf"
    write_synthetic(shape, mix, draft)
    eng = LocalEngine(ModelConfig(n_ctx=256), speculative=SpeculativeConfig(
        mode="draft", draft_model=draft))
    with pytest.raises(ModelLoadError, match="different vocabulary: 4096 tokens"):
        await eng.start()
    await eng.close()


async def test_draft_mode_without_a_draft_model_is_a_config_error() -> None:
    eng = LocalEngine(ModelConfig(n_ctx=256), speculative=SpeculativeConfig(mode="draft"))
    with pytest.raises(ConfigError, match="needs a draft model"):
        await eng.start()
    await eng.close()


async def test_a_draft_as_slow_as_the_model_is_switched_off(default_path: Path) -> None:
    # The model drafting for itself agrees with itself, but each draft costs a full
    # decode: speculation cannot pay, and the controller must notice.
    eng = LocalEngine(ModelConfig(n_ctx=1024), SamplingConfig(temperature=0, max_tokens=64),
                      KVCacheConfig(), SpeculativeConfig(mode="draft", draft_model=default_path))
    await eng.start()
    try:
        events = await collect(eng.chat(chat_request([ChatMessage(role="user", content=REPEAT)],
                                                     ignore_eos=True)))
        done = events[-1]
        assert isinstance(done, Done) and done.completion_tokens == 64
        assert done.drafted_tokens > 0 and done.accepted_tokens > 0
        off = [e for e in events if isinstance(e, SpecStats) and not e.active]
        assert off and off[0].drafter == "draft-model" and "costing time" in off[0].reason
        assert off[0].speedup < 1.0
        assert_in_step(await eng.run_on_engine_thread(_view))
    finally:
        await eng.close()


STORY = "Write a long story about a lighthouse keeper and the sea."
KV_WINDOW = ROOT / "engine" / "decode" / "kv_window.py"
CODE = ("Repeat this Python file exactly, with the function `window` renamed to "
        f"`cache_window`:\n\n```python\n{KV_WINDOW.read_text()}```")


def first_difference(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), None)


@pytest.mark.parametrize(("prompt", "n", "n_ctx"), [
    (STORY, 200, 1024), (CODE, 300, 2048), (REPEAT, 400, 256)],
    ids=["story", "code", "across-evictions"])
async def test_greedy_speculation_on_an_invariant_load_is_the_plain_output(
        prompt: str, n: int, n_ctx: int) -> None:
    # `auto`, the default, speculates under greedy sampling on a batch-invariant load:
    # each verified row is computed exactly as the one-token decode would compute it,
    # so the output cannot change (engine/model/batch_invariance.py).
    plain, _, eng = await greedy_tokens("off", prompt, n, n_ctx=n_ctx)
    await eng.close()
    spec, events, eng = await greedy_tokens("auto", prompt, n, n_ctx=n_ctx)
    await eng.close()
    done = events[-1]
    assert isinstance(done, Done) and done.accepted_tokens > 0  # speculation did run
    assert any(isinstance(e, SpecStats) for e in events)
    if n_ctx == 256:
        assert any(isinstance(e, Eviction) for e in events)
    assert first_difference(plain, spec) is None


async def test_auto_stands_aside_for_greedy_unless_invariant_and_drafts_when_sampling(
) -> None:
    # A default (not invariant) load: a batched row may differ from the one-token row
    # by about a logit, so `auto` decodes greedy replies plainly, across evictions too.
    plain, _, eng = await greedy_tokens("off", REPEAT, 400, n_ctx=256, invariant="off")
    assert not eng.info.batch_invariant  # type: ignore[union-attr]
    await eng.close()
    auto, events, eng = await greedy_tokens("auto", REPEAT, 400, n_ctx=256, invariant="off")
    await eng.close()
    assert any(isinstance(e, Eviction) for e in events)
    assert not any(isinstance(e, SpecStats) for e in events)
    assert auto == plain
    eng = LocalEngine(ModelConfig(n_ctx=1024, batch_invariant="off"),
                      SamplingConfig(temperature=0.7, max_tokens=160, seed=3),
                      KVCacheConfig(), SpeculativeConfig())  # the default: auto
    await eng.start()
    try:
        events = await collect(eng.chat(chat_request([ChatMessage(role="user", content=REPEAT)],
                                                     ignore_eos=True)))
    finally:
        await eng.close()
    done = events[-1]
    assert isinstance(done, Done) and done.completion_tokens == 160
    assert done.drafted_tokens > 0


async def test_greedy_output_with_a_self_draft_is_the_plain_output(default_path: Path) -> None:
    # The model drafting for itself: long rounds, nearly every draft accepted, so any
    # difference between batched and one-token kernels that flips a choice shows here.
    sampling = SamplingConfig(temperature=0, max_tokens=120)
    outputs = []
    for spec in (SpeculativeConfig(mode="off"),
                 SpeculativeConfig(mode="draft", draft_model=default_path, adaptive=False)):
        eng = LocalEngine(ModelConfig(n_ctx=1024, batch_invariant="on"), sampling,
                          KVCacheConfig(), spec)
        await eng.start()
        try:
            events = await collect(eng.chat(chat_request([ChatMessage(role="user", content=STORY)],
                                                         ignore_eos=True)))
        finally:
            await eng.close()
        outputs.append([t for e in events if e.type == "token" for t in e.token_ids])
        done = events[-1]
        assert isinstance(done, Done)
    assert done.accepted_tokens > 60
    assert outputs[0] == outputs[1]
