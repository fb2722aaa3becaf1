"""The engine every client shares: each reply takes its turn through the scheduler,
waiting replies see where they stand, and the server counts how replies ended.

A reply's stream is the engine's own events, preceded by ``queued`` events while it
waits. Leaving the stream early (the client disconnected, a stop string matched)
closes the engine's iterator, which cancels the reply at its next token, and hands
the slot to the next in line at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import PurePath
from typing import Any

from engine.api import ChatEngine, ChatRequest
from engine.config import SamplingConfig
from engine.errors import KvchatError
from engine.events import Done, Error, Event, Queued, TokenChunk
from engine.serve.scheduler import QueueFull, Scheduler, ServerClosing, Ticket

log = logging.getLogger("kvchat.serve")

KEEPALIVE_S = 10.0
"""A waiting reply hears from the server at least this often."""


@dataclass
class Counters:
    served: int = 0
    """Replies that ran to their end (``done``)."""
    failed: int = 0
    """Replies that ended with an engine error."""
    cancelled: int = 0
    """Replies whose client left before the end (disconnected, or a stop string)."""
    refused: int = 0
    """Requests turned away: the queue was full, or the server was stopping."""


class SharedEngine:
    """``engine`` started; ``sampling``: what a request that names no sampling gets."""

    def __init__(self, engine: ChatEngine, *, max_queue: int, sampling: SamplingConfig,
                 keepalive_s: float = KEEPALIVE_S) -> None:
        self.engine = engine
        self.sampling = sampling
        self.keepalive_s = keepalive_s
        self.scheduler = Scheduler(engine.parallel_replies, max_queue)
        self.counters = Counters()
        self.started = time.time()
        self._replies = 0

    @property
    def model_id(self) -> str:
        """The name ``/v1/models`` lists: the GGUF file's stem."""
        info = self.engine.info
        return PurePath(info.path).stem if info is not None else "kvchat"

    def admit(self) -> Ticket:
        """A place for one reply. Raises QueueFull or ServerClosing."""
        try:
            return self.scheduler.join()
        except (QueueFull, ServerClosing):
            self.counters.refused += 1
            raise

    def stop(self) -> None:
        """Take no new reply; those waiting end with a ``server_closing`` error."""
        self.scheduler.close()

    async def reply(self, ticket: Ticket, request: ChatRequest, label: str = "",
                    ) -> AsyncIterator[Event]:
        """``request``'s events once ``ticket``'s turn comes, ``queued`` events before.
        Always leaves the ticket, however the stream ends."""
        self._replies += 1
        number = self._replies
        outcome, tokens = "cancelled", 0
        detail = ""
        try:
            async for position in self.scheduler.wait(ticket, self.keepalive_s):
                yield Queued(position=position, queued=self.scheduler.queued,
                             in_flight=self.scheduler.in_flight)
            events = self.engine.chat(request)
            try:
                async for event in events:
                    if isinstance(event, TokenChunk):
                        tokens += len(event.token_ids)
                    elif isinstance(event, Done):
                        outcome = "served"
                        detail = f"{event.completion_tokens} tokens, {event.finish_reason}"
                    elif isinstance(event, Error):
                        outcome, detail = "failed", f"{event.code}: {event.message}"
                    yield event
            finally:
                await events.aclose()  # cancels the reply when its client left
        except KvchatError as exc:  # the server stopping, the engine closed
            outcome = "refused" if isinstance(exc, ServerClosing) else "failed"
            detail = f"{exc.code}: {exc.message}"
            yield Error(code=exc.code, message=exc.message)
        finally:
            self.scheduler.leave(ticket)
            setattr(self.counters, outcome, getattr(self.counters, outcome) + 1)
            if outcome == "cancelled":  # what its client took before leaving
                detail = f"stopped after {tokens} tokens (its client left, or a stop string)"
            log.info("reply %d%s %s: %s", number, f" ({label})" if label else "",
                     outcome, detail)

    def health(self) -> dict[str, Any]:
        info = self.engine.info
        scheduler = self.scheduler
        return {
            "status": "stopping" if scheduler.closing else "ok",
            "model_loaded": info is not None,
            "model": self.model_id,
            "in_flight": scheduler.in_flight,
            "queued": scheduler.queued,
            "capacity": scheduler.capacity,
            "max_queue": scheduler.max_queue,
            "replies": asdict(self.counters),
            "uptime_s": round(time.time() - self.started, 1),
        }

    def info(self) -> dict[str, Any]:
        """What a kvchat client shows before its first reply: the model as loaded and
        its memory snapshots (planned, then measured), and how the server admits."""
        info = self.engine.info
        return {
            "kvchat": 1,
            "model": self.model_id,
            "model_loaded": info.model_dump(mode="json") if info is not None else None,
            "memory": [snap.model_dump(mode="json") for snap in self.engine.memory],
            "capacity": self.scheduler.capacity,
            "max_queue": self.scheduler.max_queue,
            "sampling": self.sampling.model_dump(mode="json"),
        }
