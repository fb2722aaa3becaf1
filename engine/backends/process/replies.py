"""The replies the engine process is streaming, by request id (``ProcessEngine``).

Each has its channel; a request for N answers (``ChatEngine.answers``) stays open until
every answer has sent its last event, and a failure ends each answer still open. A
reply's own cancel event, once set, sends the child a ``Cancel`` for it alone.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator

from engine.api import when_set
from engine.backends.channel import TERMINAL, EventChannel
from engine.backends.process.wire import Cancel
from engine.errors import KvchatError
from engine.events import Error, Event


class OpenReplies:
    def __init__(self, send: Callable[[Cancel], None]) -> None:
        self._send = send
        self._channels: dict[int, EventChannel] = {}
        self._answers: dict[int, set[int]] = {}
        """Of a request for N answers, those whose last event has not come."""
        self._watches: dict[int, asyncio.Future[None]] = {}

    def __iter__(self) -> Iterator[int]:
        return iter(list(self._channels))

    def __bool__(self) -> bool:
        return bool(self._channels)

    def open(self, reply_id: int, n: int, cancel: threading.Event | None) -> EventChannel:
        channel = EventChannel(asyncio.get_running_loop(), replies=n)
        self._channels[reply_id] = channel
        if n > 1:
            self._answers[reply_id] = set(range(n))
        if cancel is not None:
            self._watches[reply_id] = asyncio.ensure_future(
                when_set(cancel, lambda: self._send(Cancel(id=reply_id))))
        return channel

    def close(self, reply_id: int, cancel: bool = False) -> None:
        """Forget the request; with ``cancel``, the child stops it if it still runs."""
        self._answers.pop(reply_id, None)
        watch = self._watches.pop(reply_id, None)
        if watch is not None:
            watch.cancel()
        if self._channels.pop(reply_id, None) is not None and cancel:
            self._send(Cancel(id=reply_id))

    def cancel(self, oldest_only: bool = False) -> None:
        for reply_id in sorted(self._channels)[:1 if oldest_only else None]:
            self._send(Cancel(id=reply_id))

    def put(self, reply_id: int, event: Event) -> None:
        channel = self._channels.get(reply_id)
        if channel is None:
            return
        channel.put(event)
        if not isinstance(event, TERMINAL):
            return
        left = self._answers.get(reply_id)
        if left is not None:
            left.discard(getattr(event, "reply", None) or 0)
        if not left:
            self.close(reply_id)

    def fail(self, reply_id: int, error: KvchatError) -> None:
        """Every answer of the request still open ends with ``error``."""
        channel = self._channels.get(reply_id)
        left = self._answers.get(reply_id)
        self.close(reply_id)
        if channel is None:
            return
        for k in sorted(left) if left is not None else [None]:
            channel.put(Error(code=error.code, message=error.message, reply=k))

    def fail_all(self, error: KvchatError) -> None:
        for reply_id in self:
            self.fail(reply_id, error)
