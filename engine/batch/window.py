"""Each sequence's own sliding window: ``engine.decode.kv_window``'s arithmetic applied
to one sequence of the batch (``seq_rm`` + ``seq_add`` on it alone).

A reply's cells never outgrow the budget admission gave it. A prompt longer than that
budget leaves room for the reply loses its oldest span after the kept prefix before it
is evaluated (reason ``prompt``); a reply that fills its budget drops its oldest span
and shifts the rest down (reason ``generation``). Cells shared with another sequence
(N answers of one prompt) are never shifted: llama.cpp moves a shared cell for every
sequence that holds it, so those replies reserve their whole length up front instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from llama_cpp import _internals

from engine.decode.kv_window import Span, choose_span, turn_boundaries
from engine.events import Eviction, EvictionReason

MIN_TAIL = 16
"""Newest prompt tokens no eviction may touch (as ``engine.decode.kv_cache``'s)."""


def prompt_span(view: Sequence[int], n_keep: int, room: int,
                ends_turn: Callable[[int], bool]) -> Span | None:
    """The span to drop from a prompt window of ``view`` so that it fits ``room``
    cells, whole old turns first; None when it fits (or nothing may go)."""
    if len(view) <= room:
        return None
    limit = len(view) - MIN_TAIL
    need = min(len(view) - room, limit - n_keep)
    if need <= 0:
        return None
    return choose_span(len(view), n_keep, need, need,
                       turn_boundaries(view, ends_turn, n_keep), limit)


def generation_span(cells: Sequence[int], n_keep: int, need: int, discard_fraction: float,
                    ends_turn: Callable[[int], bool]) -> Span | None:
    """The span to drop so that ``need`` more cells fit, a ``discard_fraction`` of what
    may go at once so evictions stay rare; None when too little may go. The newest
    cell stays: the next token follows it."""
    evictable = len(cells) - n_keep
    if evictable - 1 < need:
        return None
    target = max(need, int(evictable * discard_fraction))
    return choose_span(len(cells), n_keep, need, target,
                       turn_boundaries(cells, ends_turn, n_keep), len(cells) - 1)


def evict(ctx: _internals.LlamaContext, seq: int, cells: list[int], span: Span,
          reason: EvictionReason, *, kept: int, evicted_total: int) -> Eviction:
    """Drop positions ``[span.start, span.end)`` of ``seq`` and shift what follows down
    (llama.cpp applies the shift inside the next decode, whose time the caller adds as
    ``shift_s``). ``cells`` is updated; a span reaching past them drops only what is
    cached. The event, without the reply id and the shift's time."""
    used = len(cells)
    cached_end = min(span.end, used)
    started = time.perf_counter()
    if span.start < used:
        ctx.kv_cache_seq_rm(seq, span.start, cached_end)
        if span.end < used:
            # positions [end, used) become [start, used - size)
            ctx.kv_cache_seq_shift(seq, span.end, -1, -span.size)
        del cells[span.start:cached_end]
    return Eviction(
        reason=reason, evicted_tokens=span.size, start=span.start, end=span.end,
        kept_tokens=kept, shifted_tokens=max(0, used - span.end),
        at_turn_boundary=span.at_turn_boundary, used_before=used, used_after=len(cells),
        elapsed_s=time.perf_counter() - started, shift_s=0.0, shift_tokens=0,
        evicted_total=evicted_total)
