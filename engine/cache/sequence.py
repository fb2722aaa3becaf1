"""The state cache as one sequence of a loaded model sees it (sequence 0 on the
single-sequence path, any of the batch's): read its cells out with llama.cpp's
per-sequence state API, write a saved state back in, cut it to the prefix a prompt
shares.

Runs on the engine thread, which owns the context. A restore that fails half way (a
state llama.cpp refuses, no room for its cells, a cut the cache cannot make) leaves the
sequence empty and says so: the prompt is then evaluated in full, as if nothing had been
saved.
"""

from __future__ import annotations

import copy
import ctypes
import time
from collections.abc import Sequence
from dataclasses import dataclass

import llama_cpp

from engine.cache.entry import Match, SavedState, Snapshot, Tier, match
from engine.cache.key import StateKey, state_key
from engine.cache.pool import StateCache
from engine.cache.state_file import StateFileError
from engine.config import KVCacheConfig
from engine.model.loader import LoadedModel

SEQ = 0


@dataclass(frozen=True)
class Resume:
    """What sequence 0 holds after a switch."""

    snap: Snapshot | None
    """The restored state, or None when the live cells stayed."""
    keep: int
    """Leading cells of it (or of the live sequence) that serve the prompt."""
    via_text: bool = False
    """The prompt extends the restored conversation's text: take over its bookkeeping."""


def window_holds(lm: LoadedModel, keep: int, seq: int = SEQ) -> bool:
    """Whether sequence ``seq``, cut to ``[0, keep)``, still holds every position the token at
    ``keep`` attends to. Always for a model without sliding-window layers, and for live
    cells (llama.cpp allocates the window's layers at full size); not always for cells
    restored from a saved state: llama.cpp saves only the last window of positions of
    those layers, so a prompt that departs further back than that finds them gone.
    llama.cpp reports the window layers' lowest position (-1: none left)."""
    n_swa = int(llama_cpp.llama_model_n_swa(lm.model.model))
    if not n_swa or keep == 0:
        return True
    pos_min = llama_cpp.llama_memory_seq_pos_min(lm.ctx.memory, seq)
    return 0 <= pos_min <= window_start(keep, n_swa)


def window_start(keep: int, n_swa: int) -> int:
    """The first position the token at ``keep`` attends to in a sliding-window layer
    (llama.cpp masks positions ``n_swa`` or more behind it; it may reuse their cells)."""
    return max(0, keep - n_swa + 1)


class SeqStates:
    def __init__(self, pool: StateCache, lm: LoadedModel, policy: KVCacheConfig,
                 seq: int = SEQ) -> None:
        self.pool = pool
        self.lm = lm
        self.seq = seq
        self.key: StateKey = state_key(lm, policy)
        self.n_swa = int(llama_cpp.llama_model_n_swa(lm.model.model))

    def for_seq(self, seq: int) -> SeqStates:
        """The same pool and key on sequence ``seq`` (the key hashes the model file:
        computed once)."""
        other = copy.copy(self)
        other.seq = seq
        return other

    # -- llama.cpp ----------------------------------------------------------------

    def read(self, flags: int = 0) -> bytearray:
        """The sequence's state; with ``LLAMA_STATE_SEQ_FLAGS_SWA_ONLY``, its
        sliding-window layers' only."""
        ctx = self.lm.ctx.ctx
        size = llama_cpp.llama_state_seq_get_size_ext(ctx, self.seq, flags)
        data = bytearray(size)
        view = (ctypes.c_uint8 * size).from_buffer(data)
        got = llama_cpp.llama_state_seq_get_data_ext(ctx, view, size, self.seq, flags)
        del view  # the bytearray may not be resized while a ctypes view holds it
        return data if got == size else bytearray()

    def write(self, data: bytearray, flags: int = 0) -> bool:
        """Replace the sequence (with ``SWA_ONLY``, its sliding-window layers) with
        ``data``; False (the sequence left empty) when llama.cpp refuses it."""
        if not flags:
            self.lm.ctx.kv_cache_seq_rm(self.seq, -1, -1)
        view = (ctypes.c_uint8 * len(data)).from_buffer(data)
        ok = llama_cpp.llama_state_seq_set_data_ext(self.lm.ctx.ctx, view, len(data),
                                                    self.seq, flags) > 0
        del view
        if not ok:
            self.lm.ctx.kv_cache_seq_rm(self.seq, -1, -1)
        return ok

    def cut(self, keep: int, cells: int) -> str:
        """Keep positions ``[0, keep)`` of a restored sequence of ``cells``; why not,
        empty when done. A sliding-window cache that no longer holds the positions the
        next token attends to cannot be cut there."""
        if keep < cells and not self.lm.ctx.kv_cache_seq_rm(self.seq, keep, -1):
            return f"llama.cpp cannot cut this model's cache at position {keep}"
        if not window_holds(self.lm, keep, self.seq):
            pos_min = llama_cpp.llama_memory_seq_pos_min(self.lm.ctx.memory, self.seq)
            held = f"from {pos_min} only" if pos_min >= 0 else "none of them"
            return (f"the sliding-window cache holds positions {held}; "
                    f"continuing at {keep} needs them from {window_start(keep, self.n_swa)}")
        return ""

    # -- a switch -----------------------------------------------------------------

    def save(self, snap: Snapshot, stay: int = 0) -> None:
        """Save the live cells; ``stay``: how many of them the caller keeps."""
        started = time.perf_counter()
        data = self.read()
        if not data:
            self.pool.note("drop", tokens=len(snap.cells), reason="llama.cpp gave no state")
            return
        window = self._window_before_reply(snap, stay)
        self.pool.put(self.key, snap, data + window, started=started,
                      window_bytes=len(window))

    def _window_before_reply(self, snap: Snapshot, stay: int) -> bytearray:
        """A sliding-window model's state keeps the window layers' last ``n_swa``
        positions only, which end after the reply: regenerating it (restoring up to the
        last prompt's end) would find them gone. Their state at the prompt's end is
        kept beside it: the live cells are cut back to there (they hold every position)
        and the window layers read. Only when the cells past that point go anyway."""
        at = snap.reply_at
        if not self.n_swa or not 0 < at < len(snap.cells) or stay > at or snap.dropped:
            return bytearray()
        self.lm.ctx.kv_cache_seq_rm(self.seq, at, -1)
        if not window_holds(self.lm, at, self.seq):  # llama.cpp reused the cells it needs
            return bytearray()
        return self.read(llama_cpp.LLAMA_STATE_SEQ_FLAGS_SWA_ONLY)

    def _to_reply_start(self, entry: SavedState, data: bytearray, keep: int) -> str:
        """Put back the window layers as they were at the last prompt's end (saved
        beside the state) for a prompt that keeps up to there; why not, empty when
        done."""
        at = entry.snap.reply_at
        if not entry.window_bytes or not at - 1 <= keep <= at:
            return "no window saved for this point"
        if not self.write(data[len(data) - entry.window_bytes:],
                          llama_cpp.LLAMA_STATE_SEQ_FLAGS_SWA_ONLY):
            return "llama.cpp refused the saved window"
        self.lm.ctx.kv_cache_seq_rm(self.seq, keep, -1)
        return "" if window_holds(self.lm, keep, self.seq) \
            else "the saved window does not reach"

    def switch(self, live: Snapshot, text: str, fresh: Sequence[int], *,
               can_save: bool = True) -> Resume:
        """A prompt that does not extend the live conversation: keep the live cells if
        nothing saved serves it better, else restore the state that does. The live
        conversation is saved first when the switch would lose cells of it."""
        here = match(live, text, fresh)
        entry, best, why = self.pool.best(self.key, text, fresh)
        enough = best.common >= self.pool.config.min_tokens
        data: bytearray | None = None
        reason, loaded_ms = "", 0.0
        tier = entry.tier if entry is not None else None
        if entry is not None and best.common > here.common and enough:
            started = time.perf_counter()
            try:
                data = self.pool.load(entry)
            except StateFileError as exc:
                reason = exc.message
            loaded_ms = (time.perf_counter() - started) * 1000
        if here.common < len(live.cells) and len(live.cells) >= self.pool.config.min_tokens:
            if can_save:
                self.save(live, here.common)
            else:
                self.pool.note("drop", tokens=len(live.cells),
                               reason="a window shift is not applied yet")
        if data is None or entry is None:
            if reason or why or (entry is not None and best.common > here.common):
                self.pool.note("miss", tier, tokens=best.common,
                               reason=reason or why or
                               f"shares {best.common} tokens, fewer than "
                               f"{self.pool.config.min_tokens}")
            return Resume(None, here.common)
        return self.restore(entry, best, data, tier, loaded_ms)

    def restore(self, entry: SavedState, best: Match, data: bytearray, tier: Tier | None,
                loaded_ms: float) -> Resume:
        """Write ``entry``'s ``data`` into the sequence and cut it to ``best.common``;
        noted as a restore, or as a miss with the sequence left empty (the keep 0)."""
        started = time.perf_counter()
        cells = len(entry.snap.cells)
        state = data[:len(data) - entry.window_bytes] if entry.window_bytes else data
        why = "" if self.write(state) else "llama.cpp refused the saved state"
        why = why or self.cut(best.common, cells)
        if why.startswith("the sliding-window") and not self._to_reply_start(entry, data,
                                                                              best.common):
            why = ""
        if why:
            self.lm.ctx.kv_cache_seq_rm(self.seq, -1, -1)
            self.pool.note("miss", tier, tokens=best.common, reason=why)
            return Resume(Snapshot([], 0, 0, "", []), 0)
        self.pool.touch(entry)
        ms = loaded_ms + (time.perf_counter() - started) * 1000
        self.pool.note("restore", tier, tokens=best.common, nbytes=entry.nbytes, ms=ms)
        return Resume(entry.snap, best.common, best.via_text)

    def leave(self, live: Snapshot, *, can_save: bool = True) -> None:
        """The live conversation leaves for good (the engine closes, the model goes)."""
        if len(live.cells) >= self.pool.config.min_tokens:
            if can_save:
                self.save(live)
            else:
                self.pool.note("drop", tokens=len(live.cells),
                               reason="a window shift is not applied yet")
