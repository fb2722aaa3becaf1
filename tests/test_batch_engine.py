"""LocalEngine with parallel > 1: concurrent replies stream at once through one batch,
cancel stops one, ``answers`` gives N from one prompt evaluation, and ``kvchat ask
--n`` prints them."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from engine.api import ChatMessage
from engine.backends.local import LocalEngine
from engine.config import ModelConfig, SamplingConfig, SpeculativeConfig
from engine.errors import KvchatError
from engine.events import Done, Event, PromptEvaluated, TokenChunk
from tests.conftest import chat_request, run_kvchat

GREEDY = SamplingConfig(temperature=0.0, max_tokens=24, seed=0)


def ask(text: str) -> list[ChatMessage]:
    return [ChatMessage(role="user", content=text)]


async def collect(stream: object) -> list[Event]:
    return [event async for event in stream]  # type: ignore[attr-defined]


async def test_two_replies_stream_at_once_and_cancel_stops_only_one(
        default_path: Path) -> None:
    engine = LocalEngine(ModelConfig(path=default_path, n_ctx=512, parallel=2), GREEDY,
                         speculative=SpeculativeConfig(mode="off"))
    await engine.start()
    try:
        assert engine.parallel_replies == 2
        a = chat_request(ask("What is the capital of France?"))
        b = chat_request(ask("Name three primary colors."))
        alone_a = await collect(engine.chat(a))
        alone_b = await collect(engine.chat(b))
        together = await asyncio.gather(collect(engine.chat(a)), collect(engine.chat(b)))
        for got, want in zip(together, (alone_a, alone_b), strict=True):
            done, solo = got[-1], want[-1]
            assert isinstance(done, Done) and isinstance(solo, Done)
            assert done.completion_tokens == solo.completion_tokens > 0
        # Cancel one: leave its stream after the first token; the other finishes whole.
        long = chat_request(ask("Write a long story about a dragon."),
                            GREEDY.model_copy(update={"max_tokens": 200}), ignore_eos=True)

        async def first_token_then_leave() -> int:
            async for event in engine.chat(long):
                if isinstance(event, TokenChunk):
                    return 1
            return 0

        left, other = await asyncio.gather(first_token_then_leave(), collect(engine.chat(b)))
        assert left == 1
        end = other[-1]
        assert isinstance(end, Done) and end.finish_reason == alone_b[-1].finish_reason  # type: ignore[union-attr]
        assert end.text == alone_b[-1].text  # type: ignore[union-attr]
    finally:
        await engine.close()


async def test_answers_evaluate_the_prompt_once(default_path: Path) -> None:
    engine = LocalEngine(ModelConfig(path=default_path, n_ctx=512, parallel=3),
                         SamplingConfig(temperature=1.0, max_tokens=12, seed=3),
                         speculative=SpeculativeConfig(mode="off"))
    await engine.start()
    try:
        events = await collect(engine.answers(chat_request(ask("Tell me a joke.")), 3))
        prompts = [e for e in events if isinstance(e, PromptEvaluated)]
        assert sorted(e.reply or 0 for e in prompts) == [0, 1, 2]
        assert sum(e.evaluated_tokens or 0 for e in prompts) == prompts[0].prompt_tokens
        assert sorted(e.reply or 0 for e in events if isinstance(e, Done)) == [0, 1, 2]
        with pytest.raises(KvchatError, match="--parallel 4"):
            engine.answers(chat_request(ask("Tell me a joke.")), 4)
    finally:
        await engine.close()


def test_kvchat_ask_n_prints_three_answers_from_one_prompt_evaluation(
        kvchat_home: Path, default_path: Path) -> None:
    base = ["ask", "--n", "3", "--ctx", "512", "--max-tokens", "8", "--temp", "0.9",
            "--seed", "1", "--speculative", "off", "--model", str(default_path)]
    plain = run_kvchat(*base, "Say hello.", home=kvchat_home)
    assert plain.returncode == 0, plain.stderr
    assert [line for line in plain.stdout.splitlines() if line.startswith("--- answer")] \
        == ["--- answer 1 ---", "--- answer 2 ---", "--- answer 3 ---"]
    listed = run_kvchat(*base, "--json", "Say hello.", home=kvchat_home)
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == 3
    events = run_kvchat(*base, "--events", "jsonl", "Say hello.", home=kvchat_home)
    rows = [json.loads(line) for line in events.stdout.splitlines()]
    prompts = [r for r in rows if r["type"] == "prompt"]
    assert len(prompts) == 3
    assert sum(r["evaluated_tokens"] for r in prompts) == prompts[0]["prompt_tokens"]
    assert sorted(r["reply"] for r in rows if r["type"] == "done") == [0, 1, 2]


async def test_the_next_turn_of_a_conversation_evaluates_only_what_is_new(
        default_path: Path) -> None:
    engine = LocalEngine(ModelConfig(path=default_path, n_ctx=512, parallel=2), GREEDY,
                         speculative=SpeculativeConfig(mode="off"))
    await engine.start()
    try:
        first = await collect(engine.chat(chat_request(ask("What is the capital of France?"))))
        seen = next(e for e in first if isinstance(e, PromptEvaluated))
        done = first[-1]
        assert isinstance(done, Done)
        # Another conversation in between takes the other sequence.
        await collect(engine.chat(chat_request(ask("Name three primary colors."))))
        turn = [*ask("What is the capital of France?"),
                ChatMessage(role="assistant", content=done.text), *ask("And of Italy?")]
        second = await collect(engine.chat(chat_request(turn)))
        again = next(e for e in second if isinstance(e, PromptEvaluated))
        # Everything the first turn left in the cells: its prompt and its reply (less
        # its last token, sampled but never decoded).
        assert again.reused_tokens == seen.prompt_tokens + done.completion_tokens - 1
        assert again.evaluated_tokens == again.prompt_tokens - again.reused_tokens
    finally:
        await engine.close()


def test_overlapped_hand_over_gives_every_event_in_order_and_cancels_one(
        default_path: Path) -> None:
    """Where the output layer is on a GPU a step's events are handed over while the
    next step's decode runs: the same events in the same order, a cancel included, the
    last ones handed over once the batch is done."""
    import threading

    from engine.backends.batched import BatchRunner
    from engine.config import KVCacheConfig
    from engine.model.loader import load_model

    lm = load_model(ModelConfig(path=default_path, n_ctx=512, parallel=2))
    try:
        def run(overlap: bool, cancel_after: int | None) -> list[list[Event]]:
            runner = BatchRunner(lm, 2, KVCacheConfig(), overlap=overlap)
            logs: list[list[Event]] = [[], []]
            stops = [threading.Event(), threading.Event()]
            for log, stop, q in zip(logs, stops, ("What is the capital of France?",
                                                  "Name three primary colors."), strict=True):
                runner.join(chat_request(ask(q), GREEDY), log.append, stop)
            steps = 0
            while runner.busy:
                runner.step()
                steps += 1
                held = sum(isinstance(e, TokenChunk) for e in logs[1])
                if cancel_after is not None and held >= cancel_after:
                    stops[1].set()
            runner.close()
            assert not runner._held  # nothing left undelivered
            return logs

        plain, overlapped = run(False, None), run(True, None)
        assert [[e.type for e in log] for log in overlapped] == \
            [[e.type for e in log] for log in plain]
        assert [[e.token_ids for e in log if isinstance(e, TokenChunk)] for log in overlapped] \
            == [[e.token_ids for e in log if isinstance(e, TokenChunk)] for log in plain]
        assert all(isinstance(log[-1], Done) for log in overlapped)
        cut = run(True, 3)
        assert isinstance(cut[1][-1], Done) and cut[1][-1].finish_reason == "cancelled"
        tokens = [sum(len(e.token_ids) for e in log if isinstance(e, TokenChunk)) for log in cut]
        assert 3 <= tokens[1] < sum(len(e.token_ids) for e in plain[1]
                                    if isinstance(e, TokenChunk))
        # The other reply goes on to its end (its tokens may part from the plain run's at
        # a near tie: on a default load a row rounds differently in a smaller batch).
        assert isinstance(cut[0][-1], Done) and cut[0][-1].finish_reason != "cancelled"
        assert cut[0][-1].completion_tokens == tokens[0]
    finally:
        lm.close()
