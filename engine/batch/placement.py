"""Admission's llama.cpp side: the sequences and cells a starting group takes, what
it reuses of an idle sequence, and what a reply that ends gives back.

A group takes the idle sequence whose cells share the longest prefix with its prompt
(its conversation's previous turn, usually) and evaluates only the rest; its other
replies take free sequences, or the least recently used idle ones. Then idle
sequences are freed, least recently used first, until the cells it reserves are free.

With a state cache (``saved.py``) an idle sequence is saved before its cells go, and a
saved state that shares more of the prompt than any idle sequence is restored into the
group's sequence once the room is made.
"""

from __future__ import annotations

from engine.batch.admission import Admission
from engine.batch.saved import Restorable, SavedSeqs
from engine.batch.slots import BatchStats, Group, Slot
from engine.batch.window import prompt_span
from engine.decode.kv_window import window
from engine.decode.turn_state import common_prefix
from engine.errors import KvchatError, PromptError
from engine.events import Error, Event, Eviction
from engine.model.loader import LoadedModel

REUSE_SHARE = 0.5
"""An idle sequence is taken over while a free one waits only if the prompt shares at
least this share of its cells (its conversation's next turn shares them all): a
common template header alone must not wipe another conversation's prefix."""


class Placement:
    """Mixed into :class:`~engine.batch.decoder.BatchDecoder`."""

    lm: LoadedModel
    ledger: Admission
    slots: dict[int, Slot]
    stats: BatchStats
    saved: SavedSeqs | None
    _events: list[Event]

    def emit(self, slot: Slot, event: Event) -> None:
        raise NotImplementedError

    def admit(self) -> None:
        """Start the queued groups that fit, first in first out; report the queue."""
        ledger = self.ledger
        while ledger.waiting and ledger.fits(ledger.waiting[0]):
            group = ledger.waiting.popleft()
            try:
                self.place(group)
            except KvchatError as exc:
                for slot in list(group.members):
                    self.emit(slot, Error(code=exc.code, message=exc.message))
                    self.release(slot, keep=False)
                continue
            ledger.active.append(group)
        self._events += ledger.positions(in_flight=ledger.busy_seqs)

    def place(self, group: Group) -> None:
        """Sequences and cells for ``group``; the state cache's events of it go to its
        first reply."""
        try:
            self.seat(group)
        finally:
            if self.saved is not None:
                for note in self.saved.take_notes():
                    self.emit(group.leader, note)

    def seat(self, group: Group) -> None:
        """Sequences and cells for ``group``; its prompt cut to its room if it must be
        (oldest turns after the kept prefix first)."""
        leader = group.leader
        group.phase = "prefill"
        match, reuse = self.best_idle(group)
        found = self.saved.find(group.prompt, reuse) \
            if self.saved is not None and not group.dropped else None
        if match is not None and found is None:
            del self.ledger.idle[match.seq]
            if self.saved is not None and reuse < len(match.cells):
                self.saved.save(match, reuse)  # the cells past the shared prefix go
            leader.seq, leader.cells = match.seq, match.cells
        else:
            leader.seq, reuse = self.take_seq(), 0
        limit = len(group.prompt) - 1
        span = prompt_span(group.prompt, group.n_keep, group.room, self.lm.ends_turn)
        if span is not None:
            reuse, limit = min(reuse, span.start), span.start
            group.dropped += span.size
            group.prompt = window(group.logical, group.n_keep, group.dropped)
            self.emit(leader, Eviction(
                reason="prompt", evicted_tokens=span.size, start=span.start, end=span.end,
                kept_tokens=group.n_keep, shifted_tokens=0,
                at_turn_boundary=span.at_turn_boundary, used_before=reuse, used_after=reuse,
                elapsed_s=0.0, shift_s=0.0, shift_tokens=0, evicted_total=group.dropped))
            leader.stats.evictions += 1
            leader.stats.evicted_tokens += span.size
        self.lm.ctx.kv_cache_seq_rm(leader.seq, reuse, -1)
        del leader.cells[reuse:]
        group.evaluated = group.reused = reuse
        self.stats.prompt_tokens_reused += reuse
        for slot in group.members:
            slot.dropped = group.dropped
            if slot is not leader:
                slot.seq = self.take_seq()
        if len(group.prompt) > group.room:
            raise PromptError(f"the prompt is {len(group.prompt)} tokens; with the reply's "
                              f"share, {group.room} fit (raise --ctx or start a new "
                              "conversation)", code="prompt_too_long")
        self.make_room(group.reserved)
        if found is not None:
            self.restore(group, found, limit)

    def restore(self, group: Group, found: Restorable, limit: int) -> None:
        """Write ``found`` into the leader's empty sequence, its first ``limit`` cells
        at most; the prompt is then read from where they end (from its start after a
        miss)."""
        assert self.saved is not None
        leader = group.leader
        kept = self.saved.restore(leader.seq, found, min(found.common, limit))
        if not kept:
            return
        leader.cells = list(found.entry.snap.cells[:kept])
        group.evaluated = group.reused = group.restored = kept
        self.stats.prompt_tokens_reused += kept

    def best_idle(self, group: Group) -> tuple[Slot | None, int]:
        """The idle sequence sharing the longest prefix with ``group``'s prompt, and how
        many of its cells to keep (at least the prompt's last token is evaluated, for
        its logits). A conversation whose window slid maps onto it by its window.
        While a sequence is free, only an idle one mostly shared is taken."""
        best, best_n, best_view = None, 0, group.prompt
        for idle in self.ledger.idle.values():
            extends = idle.dropped and group.logical[:len(idle.logical)] == idle.logical
            view = window(group.logical, idle.group.n_keep, idle.dropped) if extends \
                else group.logical
            n = common_prefix(idle.cells, view)
            if idle.dropped and not extends:  # past the kept prefix: another history
                n = min(n, idle.group.n_keep)
            if self.ledger.free and n < REUSE_SHARE * len(idle.cells):
                continue
            if n > best_n:
                best, best_n, best_view = idle, n, view
        if best is not None and best_view is not group.logical:
            group.prompt, group.n_keep, group.dropped = best_view, best.group.n_keep, \
                best.dropped
        return best, min(best_n, len(group.prompt) - 1)

    def take_seq(self) -> int:
        """A sequence with no cells: a free one, else the least recently used idle."""
        ledger = self.ledger
        if not ledger.free:
            idle = ledger.lru_idle()
            assert idle is not None, "admission counted a sequence that is not there"
            self.free_idle(idle)
        return ledger.free.pop(0)

    def make_room(self, need: int) -> None:
        """Free idle sequences, least recently used first, until ``need`` cells are."""
        ledger = self.ledger
        while ledger.idle and ledger.n_ctx - ledger.held - ledger.idle_cells() < need:
            idle = ledger.lru_idle()
            assert idle is not None
            self.free_idle(idle)

    def free_idle(self, idle: Slot) -> None:
        del self.ledger.idle[idle.seq]
        if self.saved is not None:
            self.saved.save(idle)  # its conversation comes back from the state cache
        self.free_seq(idle.seq)

    def save_idle(self) -> None:
        """The decoder closes: every idle sequence is saved, least recently used first,
        as the single-sequence path saves its conversation."""
        if self.saved is None:
            return
        for idle in sorted(self.ledger.idle.values(), key=lambda s: s.last_used):
            self.saved.save(idle)
        self.ledger.idle.clear()

    def free_seq(self, seq: int) -> None:
        self.lm.ctx.kv_cache_seq_rm(seq, -1, -1)
        self.ledger.free.append(seq)

    def hand_over(self, group: Group) -> None:
        """The leader leaves while its prompt is being read: the next answer's sequence
        takes the cells read so far and goes on reading."""
        old, new = group.members[0], group.members[1]
        self.lm.ctx.kv_cache_seq_cp(old.seq, new.seq, -1, -1)
        new.cells, old.cells = old.cells, []
        group.members.remove(old)
        group.reserved -= old.budget - group.room

    def release(self, slot: Slot, *, keep: bool) -> None:
        """``slot`` ended: its sampler and its share of the cells go. The last reply of
        its group keeps its sequence idle, as its conversation's prefix, when ``keep``."""
        slot.sampler.close()
        self.slots.pop(slot.reply, None)
        group = slot.group
        if slot in group.members:
            group.members.remove(slot)
            group.reserved -= slot.budget - group.room
        if group.phase == "waiting":
            if not group.members:
                self.ledger.waiting.remove(group)
            return
        if slot.seq < 0:
            return
        if group.members:
            self.free_seq(slot.seq)
            return
        if group in self.ledger.active:
            self.ledger.active.remove(group)
        if keep:
            slot.logical = group.logical + slot.tokens
            slot.last_used = self.stats.steps
            self.ledger.idle[slot.seq] = slot
        else:
            self.free_seq(slot.seq)
