"""Carry events from the engine thread into asyncio, coalescing tokens.

The thread never blocks on the consumer: ``put`` appends to a deque and wakes the
loop at most once per batch. The consumer takes everything queued at each wake-up and
merges consecutive token events, so a model faster than the screen sends the UI
fewer, larger chunks instead of a flood, and a slow model's tokens still arrive
one by one with no added delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import AsyncIterator

from engine.events import Done, Error, Event, TokenChunk

TERMINAL = (Done, Error)


class EventChannel:
    """``min_gap_s``: after handing over what was queued, wait this long before the next
    hand-over, so that what arrives meanwhile goes out together (the engine process
    relays a reply this way, at the gap its client asked for:
    :meth:`engine.api.ChatEngine.pace_events`). Not until the first token has gone
    out: what comes before it (routing, the prompt's evaluation) must not hold the
    reply's first words back."""

    def __init__(self, loop: asyncio.AbstractEventLoop, min_gap_s: float = 0.0,
                 replies: int = 1) -> None:
        self._loop = loop
        self._open = replies
        """Replies whose last event has not come: N answers share one channel."""
        self._min_gap_s = min_gap_s
        self._lock = threading.Lock()
        self._items: deque[Event] = deque()
        self._wake_pending = False
        self._ready = asyncio.Event()
        self._spoken = False
        """A token has been handed over: from now on, hand-overs keep the gap."""

    def put(self, event: Event) -> None:
        """Called from the engine thread."""
        with self._lock:
            self._items.append(event)
            if self._wake_pending:
                return
            self._wake_pending = True
        # A closed loop means nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        with self._lock:
            self._wake_pending = False
        self._ready.set()

    def _take(self) -> list[Event]:
        with self._lock:
            items = list(self._items)
            self._items.clear()
        return coalesce(items)

    async def __aiter__(self) -> AsyncIterator[Event]:
        while True:
            await self._ready.wait()
            self._ready.clear()
            spoken = False
            for event in self._take():
                spoken = spoken or isinstance(event, TokenChunk)
                yield event
                if isinstance(event, TERMINAL):
                    self._open -= 1
                    if not self._open:
                        return
            self._spoken = self._spoken or spoken
            if self._min_gap_s and self._spoken:
                await asyncio.sleep(self._min_gap_s)


def coalesce(events: list[Event]) -> list[Event]:
    """Merge runs of adjacent token events of one reply into one event each."""
    out: list[Event] = []
    for event in events:
        prev = out[-1] if out else None
        if (isinstance(event, TokenChunk) and isinstance(prev, TokenChunk)
                and event.reply == prev.reply):
            out[-1] = TokenChunk(ts=event.ts, text=prev.text + event.text,
                                 token_ids=prev.token_ids + event.token_ids,
                                 reply=event.reply)
        else:
            out.append(event)
    return out
