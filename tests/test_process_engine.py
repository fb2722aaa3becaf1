"""The engine in a child process: the same replies as in-process, and a crash of the
child costs one reply, never the caller."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine.api import ChatMessage, ChatRequest
from engine.backends.local import LocalEngine
from engine.backends.process.engine import ProcessEngine
from engine.backends.process.wire import REPLY_ADAPTER, REQUEST_ADAPTER, Chat, StreamEvent, encode
from engine.config import ModelConfig, SamplingConfig, SpeculativeConfig
from engine.errors import EngineClosed, ModelFileError
from engine.events import Done, Error, Event, MemorySnapshot, ModelLoaded, TokenChunk
from tests.conftest import chat_request

GREEDY = SamplingConfig(temperature=0.0, max_tokens=48, seed=0)
PROMPT = [ChatMessage(role="user", content="Write a short poem about the sea.")]


@pytest.fixture
async def child() -> AsyncIterator[ProcessEngine]:
    eng = ProcessEngine(ModelConfig(n_ctx=1024), GREEDY)
    await eng.start()
    yield eng
    await eng.close()


async def collect(stream: AsyncIterator[Event]) -> list[Event]:
    return [event async for event in stream]


async def wait_for_vocab(eng: ProcessEngine) -> None:
    for _ in range(200):
        if eng.count_tokens("x") is not None:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the vocabulary was never read")


def test_requests_and_replies_survive_the_wire() -> None:
    chat = Chat(id=7, request=ChatRequest(messages=PROMPT, sampling=GREEDY, reserve=64),
                relay_gap_s=0.04)
    assert REQUEST_ADAPTER.validate_json(encode(chat)) == chat
    event = StreamEvent(id=7, event=TokenChunk(text="é\n", token_ids=[1, 2]))
    back = REPLY_ADAPTER.validate_json(encode(event))
    assert isinstance(back, StreamEvent) and back.event == event.event


async def test_the_child_replies_exactly_as_the_engine_in_process(
        child: ProcessEngine) -> None:
    info = child.info
    assert isinstance(info, ModelLoaded) and child.pid is not None and child.pid != os.getpid()
    assert [s.stage for s in child.memory][:1] == ["planned"]
    events = await collect(child.chat(chat_request(PROMPT)))
    done = events[-1]
    assert isinstance(done, Done) and done.completion_tokens == 48
    assert "".join(e.text for e in events if isinstance(e, TokenChunk)) == done.text
    await child.close()

    local = LocalEngine(ModelConfig(n_ctx=1024), GREEDY)
    await local.start()
    try:
        here = (await collect(local.chat(chat_request(PROMPT))))[-1]
        assert isinstance(here, Done)
        assert here.text == done.text  # greedy, same load: the same tokens
    finally:
        await local.close()


async def test_a_client_that_paints_less_often_gets_fewer_batches(
        child: ProcessEngine) -> None:
    """The pace a client asks for (``pace_events``) travels with each request: the
    child then sends the reply's events in batches at most that often, and no token is
    lost."""
    child.pace_events(0.3)
    loop = asyncio.get_running_loop()
    arrivals: list[float] = []  # when each event arrived, from the first token on
    text = ""
    tokens = 0
    async for event in child.chat(chat_request(PROMPT)):
        if isinstance(event, TokenChunk) or arrivals:
            arrivals.append(loop.time())
        if isinstance(event, TokenChunk):
            text += event.text
            tokens += len(event.token_ids)
        elif isinstance(event, Done):
            assert text == event.text and event.completion_tokens == 48
    assert tokens == 48 and arrivals
    # A hand-over's events are written back to back: they arrive within microseconds
    # of each other (a token run split by a KV sample comes as several chunks).
    handovers = 1 + sum(b - a > 0.005 for a, b in itertools.pairwise(arrivals))
    # In the child, each hand-over after the first waits the gap, so n of them span at
    # at least (n - 1) gaps. Counted, not timed one by one: a busy machine can split a
    # hand-over on its way or hold the first one back, hence two of slack. Without the
    # gap, the reply's decode steps come one by one: dozens within the same span.
    span = arrivals[-1] - arrivals[0]
    assert handovers - 1 <= span / 0.3 + 2, (handovers, span)


async def test_token_counts_and_classification_cross_over(child: ProcessEngine) -> None:
    await wait_for_vocab(child)
    text = "Summarize this: the cat sat on the mat. <start_of_turn>"
    local = LocalEngine(ModelConfig(n_ctx=512))
    await local.start()
    try:
        assert child.count_tokens(text) == local.count_tokens(text)
    finally:
        await local.close()
    answer = await child.classify("def add(a, b):\n    return a + b\n\nFix this function.",
                                  ["code", "chat"],
                                  {"code": "programming questions", "chat": "small talk"})
    assert answer is not None and answer.route in ("code", "chat")
    assert 0.0 < answer.confidence <= 1.0 and answer.prompt_tokens > 0


async def test_cancel_stops_the_reply_in_the_child(child: ProcessEngine) -> None:
    long = SamplingConfig(temperature=0.0, max_tokens=3000)
    events: list[Event] = []
    async for event in child.chat(chat_request(PROMPT, long, ignore_eos=True)):
        events.append(event)
        if sum(isinstance(e, TokenChunk) for e in events) == 3:
            child.cancel()
    done = events[-1]
    assert isinstance(done, Done) and done.finish_reason == "cancelled"
    assert done.completion_tokens < 3000
    # Leaving a stream early cancels it too, and the next reply is served normally.
    stream = child.chat(chat_request(PROMPT, long, ignore_eos=True))
    async for event in stream:
        if isinstance(event, TokenChunk):
            break
    await stream.aclose()  # type: ignore[attr-defined]
    after = (await collect(child.chat(chat_request(PROMPT))))[-1]
    assert isinstance(after, Done) and after.completion_tokens == 48


async def test_a_killed_child_ends_the_reply_and_the_next_one_starts_it_again(
        child: ProcessEngine) -> None:
    first_pid = child.pid
    assert first_pid is not None
    events: list[Event] = []
    async for event in child.chat(chat_request(
            PROMPT, SamplingConfig(temperature=0.0, max_tokens=3000), ignore_eos=True)):
        events.append(event)
        if isinstance(event, TokenChunk) and len(events) < 50:
            os.kill(first_pid, signal.SIGKILL)
    end = events[-1]
    assert isinstance(end, Error) and end.code == "engine_died"
    assert "SIGKILL" in end.message and "loads the model again" in end.message
    assert child.pid is None
    # What a classification needs is gone with it: the router's decision stands.
    assert await child.classify("hi", ["chat", "code"], {}) is None
    events = await collect(child.chat(chat_request(PROMPT)))
    again = events[-1]
    assert isinstance(again, Done) and again.completion_tokens == 48
    assert child.starts == 2 and child.pid not in (None, first_pid)
    # The new process's load leads its first reply: a UI can show it.
    assert isinstance(events[0], ModelLoaded) and events[0].load_s > 0
    assert [e.stage for e in events[1:3] if isinstance(e, MemorySnapshot)] == \
        ["planned", "loaded"]
    # Later replies carry no load.
    assert not isinstance((await collect(child.chat(chat_request(PROMPT))))[0], ModelLoaded)


async def test_a_bad_file_is_refused_in_the_child_with_the_same_error(
        bad_files: dict[str, Path]) -> None:
    for name in ("empty", "garbage", "truncated"):
        eng = ProcessEngine(ModelConfig(path=bad_files[name], n_ctx=512))
        with pytest.raises(ModelFileError) as caught:
            await eng.start()
        assert str(bad_files[name]) in caught.value.message
        assert eng.pid is None  # nothing left running
        await eng.close()


async def test_closing_stops_the_child_and_refuses_new_replies() -> None:
    eng = ProcessEngine(ModelConfig(n_ctx=512), GREEDY,
                        speculative=SpeculativeConfig(mode="off"))
    await eng.start()
    pid = eng.pid
    assert pid is not None
    await eng.close()
    assert eng.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped, not a zombie
    with pytest.raises(EngineClosed):
        eng.chat(chat_request(PROMPT))
    with pytest.raises(EngineClosed):
        await eng.start()


async def test_the_child_exits_when_its_parent_goes_away() -> None:
    """A parent killed outright never sends ``close``: the child sees its stdin end."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "engine.backends.process.child",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert proc.stdin is not None
    proc.stdin.close()
    assert await asyncio.wait_for(proc.wait(), 30) == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priority")
def test_a_restarted_engine_process_keeps_the_priority_of_the_first() -> None:
    """The app lowers its screen thread's priority after the load; an engine process
    started again from that thread would inherit it and decode at the screen's rank."""
    seen: dict[str, int] = {}

    async def scenario() -> None:
        eng = ProcessEngine(ModelConfig(n_ctx=512), GREEDY,
                            speculative=SpeculativeConfig(mode="off"))
        await eng.start()
        assert eng.pid is not None
        seen["first"] = os.getpriority(os.PRIO_PROCESS, eng.pid)
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + 5)
        seen["screen"] = os.getpriority(os.PRIO_PROCESS, tid)
        os.kill(eng.pid, signal.SIGKILL)
        for _ in range(100):  # the kill lands, the engine hears of it
            if eng.pid is None:
                break
            await asyncio.sleep(0.05)
        events = await collect(eng.chat(chat_request(PROMPT)))
        assert isinstance(events[-1], Done) and eng.starts == 2 and eng.pid is not None
        seen["again"] = os.getpriority(os.PRIO_PROCESS, eng.pid)
        await eng.close()

    # A thread of its own, so that lowering its priority leaves pytest's alone.
    failures: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(scenario())
        except BaseException as exc:
            failures.append(exc)

    runner = threading.Thread(target=run)
    runner.start()
    runner.join(120)
    if failures:
        raise failures[0]
    assert seen["screen"] == min(19, seen["first"] + 5)
    assert seen["again"] == seen["first"]
