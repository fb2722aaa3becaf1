"""Who generates next: replies admitted up to the engine's capacity, the rest waiting
in arrival order, a bounded queue, and a stop that refuses whoever still waits.

Everything here runs on the server's event loop, so no lock is needed; a waiter
learns of its turn (or of a move up the queue) through its ticket's event.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from engine.errors import KvchatError


class QueueFull(KvchatError):
    """Every slot is busy and the queue is at its limit: try again later (HTTP 429)."""

    code = "queue_full"


class ServerClosing(KvchatError):
    """The server is stopping: it takes no new reply (HTTP 503)."""

    code = "server_closing"


@dataclass(eq=False)
class Ticket:
    """One reply's place: waiting, then granted a slot, then released."""

    granted: bool = False
    released: bool = False
    refused: bool = False
    """The server stopped before this reply's turn came."""
    moved: asyncio.Event = field(default_factory=asyncio.Event)


class Scheduler:
    """``capacity``: replies the engine generates at once (its ``parallel_replies``);
    ``max_queue``: replies that may wait beyond those."""

    def __init__(self, capacity: int, max_queue: int) -> None:
        self.capacity = max(1, capacity)
        self.max_queue = max_queue
        self.in_flight = 0
        self.closing = False
        self._waiting: deque[Ticket] = deque()

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def join(self) -> Ticket:
        """A place for one reply: a slot at once when one is free and nobody waits,
        else the end of the queue. Raises ServerClosing or QueueFull."""
        if self.closing:
            raise ServerClosing("the server is stopping and takes no new reply")
        ticket = Ticket()
        if self.in_flight < self.capacity and not self._waiting:
            self._grant(ticket)
        elif len(self._waiting) >= self.max_queue:
            raise QueueFull(f"the server is busy: {self.in_flight} replies generating and "
                            f"{len(self._waiting)} waiting (the queue's limit); try again later")
        else:
            self._waiting.append(ticket)
        return ticket

    def position(self, ticket: Ticket) -> int:
        """1 for the next to start; 0 once granted."""
        if ticket.granted:
            return 0
        return self._waiting.index(ticket) + 1

    async def wait(self, ticket: Ticket, every_s: float) -> AsyncIterator[int]:
        """The ticket's queue position now, again each time it moves and at least every
        ``every_s`` while it waits (a keep-alive for the client); ends once granted.
        Raises ServerClosing when the server stops first."""
        while True:
            ticket.moved.clear()  # before reading the position: no move goes unseen
            if ticket.granted:
                return
            if ticket.refused:
                raise ServerClosing("the server stopped before this reply's turn")
            yield self.position(ticket)
            if not ticket.moved.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ticket.moved.wait(), every_s)

    def leave(self, ticket: Ticket) -> None:
        """The reply is over (finished, failed or abandoned): its slot goes to the next
        in line, or it leaves the queue. Safe to call more than once."""
        if ticket.granted:
            if not ticket.released:
                ticket.released = True
                self.in_flight -= 1
                self._admit()
        elif ticket in self._waiting:
            self._waiting.remove(ticket)
            self._moved()

    def close(self) -> None:
        """Take no new reply and refuse every waiting one; those generating go on."""
        self.closing = True
        for ticket in self._waiting:
            ticket.refused = True
            ticket.moved.set()
        self._waiting.clear()

    def _grant(self, ticket: Ticket) -> None:
        ticket.granted = True
        self.in_flight += 1
        ticket.moved.set()

    def _admit(self) -> None:
        while self.in_flight < self.capacity and self._waiting:
            self._grant(self._waiting.popleft())
        self._moved()

    def _moved(self) -> None:
        for ticket in self._waiting:
            ticket.moved.set()
