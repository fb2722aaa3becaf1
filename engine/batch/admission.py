"""Who holds the cells and sequences of the batch, and who waits for them.

Pure bookkeeping: the decoder makes the llama.cpp calls. A group (a prompt and its
replies) is counted for its prompt's cells once and for each reply's share of the
budget (``max_tokens``, within the window); an idle sequence (a finished reply kept as
its conversation's prefix) holds its cells until a group needs them, least recently
used first. Groups are admitted first in, first out: the head of the queue blocks the
rest, so a long prompt is never starved by short ones behind it.
"""

from __future__ import annotations

from collections import deque

from engine.batch.slots import Group, Slot
from engine.errors import KvchatError
from engine.events import Queued


class Admission:
    def __init__(self, n_ctx: int, n_seq: int, max_queue: int) -> None:
        self.n_ctx, self.n_seq, self.max_queue = n_ctx, n_seq, max_queue
        self.free: list[int] = list(range(n_seq))
        """Sequences holding no cells."""
        self.idle: dict[int, Slot] = {}
        """Finished replies' sequences kept as prefixes, by sequence."""
        self.active: list[Group] = []
        self.waiting: deque[Group] = deque()

    def check(self, group: Group) -> None:
        """Refuse, with the reason, a group that could never run or that the queue
        cannot hold."""
        n = len(group.members)
        if n > self.n_seq:
            raise KvchatError(f"{n} replies at once need {n} sequences; the model was "
                              f"loaded with {self.n_seq} (raise --parallel)")
        if group.reserved > self.n_ctx:
            raise KvchatError(f"{n} replies of this prompt need {group.reserved} KV cells; "
                              f"the context holds {self.n_ctx} (raise --ctx, or lower "
                              "max_tokens or the number of answers)")
        waiting = sum(len(g.members) for g in self.waiting)
        if (self.waiting or not self.fits(group)) and waiting + n > self.max_queue:
            raise KvchatError(f"the batch is full and {waiting} replies already wait "
                              f"(at most {self.max_queue}): try again when one finishes")

    @property
    def held(self) -> int:
        """Cells the active groups reserve."""
        return sum(g.reserved for g in self.active)

    @property
    def busy_seqs(self) -> int:
        return sum(len(g.members) for g in self.active)

    def fits(self, group: Group) -> bool:
        """Whether ``group`` could start now (idle sequences give their cells back)."""
        return (group.reserved <= self.n_ctx - self.held
                and len(group.members) <= self.n_seq - self.busy_seqs)

    def idle_cells(self) -> int:
        return sum(len(s.cells) for s in self.idle.values())

    def lru_idle(self) -> Slot | None:
        return min(self.idle.values(), key=lambda s: s.last_used, default=None)

    def positions(self, in_flight: int) -> list[Queued]:
        """A ``Queued`` event for each waiting reply whose position changed."""
        events, ahead = [], 0
        total = sum(len(g.members) for g in self.waiting)
        for group in self.waiting:
            if group.queued_at != ahead + 1:
                group.queued_at = ahead + 1
                events += [Queued(position=ahead + 1, queued=total, in_flight=in_flight,
                                  reply=slot.reply) for slot in group.members]
            ahead += len(group.members)
        return events


def reply_budget(window: int, prompt_len: int, max_tokens: int, n: int) -> tuple[int, int]:
    """(cells one reply may hold, of which its reply's share) in a ``window`` of cells.
    Alone, a reply keeps at least a quarter of the window (or ``max_tokens``) free of
    prompt; N answers share their prompt's cells, which never slide, so they must fit
    whole."""
    if n > 1:
        if prompt_len + max_tokens > window:
            raise KvchatError(f"{n} answers share their prompt's cells and cannot slide a "
                              f"window: the prompt ({prompt_len} tokens) and max_tokens "
                              f"({max_tokens}) must fit the {window}-token context")
        return prompt_len + max_tokens, max_tokens
    room = window - min(max_tokens, window // 4)
    prompt_cells = min(prompt_len, room)
    gen = min(max_tokens, window - prompt_cells)
    return prompt_cells + gen, gen
