"""The channel from the engine thread into asyncio: tokens merged while the consumer is
busy or pacing itself, nothing lost, the first event never held."""

from __future__ import annotations

import asyncio
import threading
import time

from engine.backends.channel import EventChannel
from engine.events import Error, Event, KVUsage, TokenChunk


def token(i: int) -> TokenChunk:
    return TokenChunk(text=f"t{i} ", token_ids=[i])


def end() -> Error:
    """A terminal event, as the engine's last."""
    return Error(code="cancelled", message="stopped")


async def receive(min_gap_s: float) -> list[Event]:
    channel = EventChannel(asyncio.get_running_loop(), min_gap_s)
    first_seen = threading.Event()

    def engine_thread() -> None:
        channel.put(token(0))
        first_seen.wait(5)
        for i in range(1, 10):
            time.sleep(0.005)
            channel.put(token(i))
        channel.put(end())

    thread = threading.Thread(target=engine_thread)
    thread.start()
    got: list[Event] = []
    async for event in channel:
        got.append(event)
        first_seen.set()
    thread.join()
    return got


def test_a_paced_channel_sends_fewer_larger_chunks_and_loses_nothing() -> None:
    got = asyncio.run(receive(min_gap_s=0.04))
    tokens = [e for e in got if isinstance(e, TokenChunk)]
    assert tokens[0].text == "t0 "  # the first event is never held
    assert len(tokens) <= 4  # 9 tokens 5 ms apart, handed over every 40 ms
    assert "".join(t.text for t in tokens) == "".join(f"t{i} " for i in range(10))
    assert [i for t in tokens for i in t.token_ids] == list(range(10))
    assert isinstance(got[-1], Error)


def test_an_unpaced_channel_hands_over_each_token_as_it_comes() -> None:
    got = asyncio.run(receive(min_gap_s=0.0))
    tokens = [e for e in got if isinstance(e, TokenChunk)]
    assert len(tokens) >= 8  # the consumer keeps up: no reason to wait and merge
    assert "".join(t.text for t in tokens) == "".join(f"t{i} " for i in range(10))


def test_what_comes_before_the_first_token_does_not_hold_it_back() -> None:
    """Routing and the prompt's evaluation are events too; a paced channel keeps its gap
    only once the reply's first words have gone out."""

    async def run() -> list[float]:
        loop = asyncio.get_running_loop()
        channel = EventChannel(loop, min_gap_s=5.0)
        prompt_seen = threading.Event()

        def engine_thread() -> None:
            channel.put(KVUsage(used_cells=40, n_ctx=1024, reserved_cells=0,  # the prompt
                                bytes_per_cell=None, used_bytes=None, total_bytes=None))
            prompt_seen.wait(5)
            time.sleep(0.01)
            channel.put(token(0))
            channel.put(end())

        thread = threading.Thread(target=engine_thread)
        thread.start()
        arrivals = []
        async for event in channel:
            arrivals.append(loop.time())
            prompt_seen.set()
            if isinstance(event, TokenChunk):
                break
        thread.join()
        return arrivals

    first, token_at = asyncio.run(run())[:2]
    assert token_at - first < 2.5  # not held for the 5 s gap (it takes ~10 ms)
