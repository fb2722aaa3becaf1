"""The state cache (``engine.cache``) for the batch's sequences.

An idle sequence whose cells are about to go (freed for another reply, taken over by a
prompt that shares only part of it, or the engine closing) is saved first; a new prompt
that a saved state serves better than any idle sequence gets that state written into
its sequence and evaluates only the rest.

The rules are the single-sequence path's (``SeqStates``): the same pool and key (a
state saved here restores there and the other way round, where the key allows), the
longest shared prefix of at least ``min_tokens``, and a restore llama.cpp refuses (no
contiguous room left in a shared pool, a state too large for a sequence's stream) is a
miss with its reason: the prompt is then evaluated in full. The batch sees tokens, not
rendered text, so its states carry none and a prompt matches them by their cells.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from engine.batch.slots import Slot
from engine.cache.entry import Match, SavedState, Snapshot
from engine.cache.pool import StateCache
from engine.cache.sequence import SeqStates
from engine.cache.state_file import StateFileError
from engine.config import KVCacheConfig
from engine.events import StateCacheNote
from engine.model.loader import LoadedModel


@dataclass(frozen=True)
class Restorable:
    """A saved state a prompt will take, read out of the pool before any sequence is
    freed for it (a save that makes room may push it out of the pool)."""

    entry: SavedState
    common: int
    """Leading prompt tokens its cells hold (at most all but the prompt's last)."""
    data: bytearray
    loaded_ms: float


class SavedSeqs:
    """The pool as each of ``n_seq`` sequences sees it."""

    def __init__(self, pool: StateCache, lm: LoadedModel, policy: KVCacheConfig,
                 n_seq: int) -> None:
        self.pool = pool
        first = SeqStates(pool, lm, policy)
        self.seqs = [first.for_seq(seq) for seq in range(n_seq)]

    def save(self, idle: Slot, stay: int = 0) -> None:
        """Save ``idle``'s cells as they are; ``stay``: how many of them its sequence
        keeps afterwards."""
        if len(idle.cells) < self.pool.config.min_tokens:
            return
        # The reply starts after the prompt's cells unless the window slid since.
        reply_at = 0 if idle.dropped else len(idle.group.prompt)
        snap = Snapshot(list(idle.cells), idle.group.n_keep, idle.dropped, "",
                        list(idle.logical), reply_at)
        self.seqs[idle.seq].save(snap, stay)

    def find(self, prompt: list[int], reuse: int) -> Restorable | None:
        """The saved state that shares more of ``prompt`` than the ``reuse`` cells an
        idle sequence offers, read into memory; None (a miss noted when a state came
        close) when none does."""
        if reuse >= len(prompt) - 1:
            return None
        entry, best, why = self.pool.best(self.seqs[0].key, "", prompt)
        common = min(best.common, len(prompt) - 1)
        least = self.pool.config.min_tokens
        if entry is None or common <= reuse or best.common < least:
            if entry is not None and common > reuse:
                self.pool.note("miss", entry.tier, tokens=best.common,
                               reason=f"shares {best.common} tokens, fewer than {least}")
            elif why and reuse < least:
                self.pool.note("miss", tokens=best.common, reason=why)
            return None
        tier, started = entry.tier, time.perf_counter()
        try:
            data = self.pool.load(entry)
        except StateFileError as exc:
            self.pool.note("miss", tier, tokens=common, reason=exc.message)
            return None
        self.pool.touch(entry)  # the most recent now: saves that make room keep it
        return Restorable(entry, common, data, (time.perf_counter() - started) * 1000)

    def restore(self, seq: int, found: Restorable, keep: int) -> int:
        """Write ``found`` into the empty sequence ``seq``, cut to its first ``keep``
        cells; the cells it holds then (0 after a miss, noted with its reason)."""
        if keep <= 0:
            return 0
        got = self.seqs[seq].restore(found.entry, Match(keep, False), found.data,
                                     found.entry.tier, found.loaded_ms)
        return got.keep

    def take_notes(self) -> list[StateCacheNote]:
        return self.pool.take_notes()


def saved_seqs(lm: LoadedModel, n_seq: int, pool: StateCache | None,
               policy: KVCacheConfig | None) -> SavedSeqs | None:
    """The batch's view of ``pool``; None without one (or with the cache off)."""
    if pool is None or not pool.enabled:
        return None
    return SavedSeqs(pool, lm, policy or KVCacheConfig(), n_seq)
