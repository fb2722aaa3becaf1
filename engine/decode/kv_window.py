"""Sliding-window arithmetic over a conversation's tokens: what stays, what goes.

A conversation is one growing token sequence (the *logical* tokens: every turn as
rendered). The KV cache holds a window of it: the first ``n_keep`` tokens (system
prompt, attention sinks), then everything after the ``dropped`` oldest tokens that
followed them. Evictions only ever grow ``dropped``, so the window is always

    cache = logical[:n_keep] + logical[n_keep + dropped:]

and a later turn, whose logical tokens extend the earlier ones, maps onto the cache
again by the same formula: prefix reuse survives eviction. Pure functions, no
llama.cpp: the generator applies the decisions to the cache.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass


def window(logical: Sequence[int], n_keep: int, dropped: int) -> list[int]:
    """The tokens the cache should hold for ``logical`` after ``dropped`` evictions."""
    return [*logical[:n_keep], *logical[n_keep + dropped:]]


def turn_boundaries(tokens: Sequence[int], ends_turn: Callable[[int], bool],
                    start: int = 0) -> list[int]:
    """Positions right after an end-of-turn token: cutting there splits no message."""
    return [i + 1 for i in range(start, len(tokens)) if ends_turn(tokens[i])]


@dataclass(frozen=True)
class Span:
    """Cache positions ``[start, end)`` to evict."""

    start: int
    end: int
    at_turn_boundary: bool

    @property
    def size(self) -> int:
        return self.end - self.start


def choose_span(n_tokens: int, n_keep: int, need: int, target: int,
                boundaries: Sequence[int], limit: int) -> Span:
    """The span after the kept prefix to evict from a window of ``n_tokens``.

    ``need`` cells must go; ``target`` (>= need) is what the policy would like to
    free in one go, so evictions stay rare. A turn boundary between ``target`` and
    twice that is preferred (whole old turns go, no message is cut); failing that,
    the span ends exactly at ``target``. The span never reaches past ``limit``
    (the tokens that must survive, e.g. the reply's header).
    """
    start = n_keep
    target = max(need, target)
    most = min(limit, start + 2 * target)
    least = start + need
    for b in boundaries:
        if start + target <= b <= most:
            return Span(start, b, True)
    end = max(least, min(start + target, limit))
    # A boundary that frees at least what is needed still beats a mid-message cut.
    for b in reversed(boundaries):
        if least <= b <= end:
            return Span(start, b, True)
    return Span(start, end, False)
