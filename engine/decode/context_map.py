"""Which tokens of each message the model still has: the ``context`` event.

Positions are *logical* (the conversation as rendered, nothing evicted: see
``kv_window``), so a message keeps its span however the window slides. A message's span
runs from its text's first token to its end-of-turn token, included; the turn headers
between messages (and the reply's, at the prompt's end) belong to none. Where the
messages' texts start is kept from turn to turn while the conversation only grows, so a
turn tokenizes the heads of its new messages only.
"""

from __future__ import annotations

from collections.abc import Sequence

import llama_cpp

from engine.api import ChatMessage
from engine.decode.kv_cache import KVCache, Prompt
from engine.decode.turn_state import common_prefix
from engine.events import ContextMap, Eviction

Range = tuple[int, int]
HEADER_TOKENS = 16
"""How far before a message's text its turn's start is looked for."""


class ContextTracker:
    """Follows one cache: where its conversation's messages start, and what each
    eviction took (logical spans, with its reason)."""

    def __init__(self, cache: KVCache) -> None:
        self.cache = cache
        self.reply: list[int] = []
        """The reply's tokens so far (the turn's own list, which grows as it streams)."""
        self.cut = 0
        """Tokens of this turn's message cut to fit (``prompt_truncated``)."""
        self._messages: list[ChatMessage] = []
        self._starts: list[int] = []
        """Where each message's text starts."""
        self._ends: list[int] = []
        self._logical: list[int] = []
        self._evicted: list[tuple[int, int, str]] = []
        self._restored: list[Range] = []

    def begin(self, messages: Sequence[ChatMessage], prompt: Prompt) -> None:
        """The turn's prompt is placed: find its messages, and what was restored."""
        kv = self.cache.state
        shared = common_prefix(self._logical, prompt.logical)
        known = 0
        while (known < min(len(self._messages), len(messages))
               and self._messages[known] == messages[known]
               and self._starts[known] <= shared):
            known += 1
        starts = self._starts[:known]
        for i in range(known, len(messages)):
            start = self.cache.message_start(messages[:i + 1], prompt.logical)
            starts.append(max(start, starts[-1] if starts else 0))
        self._messages, self._starts, self._logical = list(messages), starts, prompt.logical
        self._ends = [max(s, self._end_before(e, prompt.logical))
                      for s, e in zip(starts, [*starts[1:], len(prompt.logical)], strict=True)]
        # The eviction record still describes this window only if the window is the same.
        if not (self._evicted and self._evicted[0][0] == kv.n_keep
                and sum(e - s for s, e, _ in self._evicted) == kv.dropped
                and shared >= kv.n_keep + kv.dropped):
            self._evicted = [(kv.n_keep, kv.n_keep + kv.dropped, "earlier")] \
                if kv.dropped else []
        held = self.cache.restored
        self._restored = [(0, min(held, kv.n_keep))] if held else []
        if held > kv.n_keep:
            self._restored.append((kv.n_keep + kv.dropped, held + kv.dropped))
        self.reply, self.cut = [], 0

    def _end_before(self, text_start: int, logical: Sequence[int]) -> int:
        """Where the turn before the text at ``text_start`` ends: right after the last
        end-of-turn token shortly before it; the text's start where no such token is
        near (a format without one)."""
        vocab = self.cache.lm.model.vocab
        for i in range(text_start - 1, max(-1, text_start - HEADER_TOKENS - 1), -1):
            if llama_cpp.llama_vocab_is_eog(vocab, logical[i]):
                return i + 1
        return text_start

    def evicted(self, ev: Eviction) -> None:
        """Record an eviction (its span starts after the kept prefix, in window terms)."""
        start = ev.kept_tokens + ev.evicted_total - ev.evicted_tokens
        self._evicted.append((start, start + ev.evicted_tokens, ev.reason))

    def event(self) -> ContextMap:
        """The map as the cache stands now."""
        kv = self.cache.state
        end = len(self._logical)
        spans = [(m.role, s, e) for m, s, e in zip(self._messages, self._starts, self._ends,
                                                    strict=True)]
        spans.append(("assistant", end, end + len(self.reply)))
        used = self.cache.used
        # Drafts being verified are in the cells for a moment: not part of the reply yet.
        cached = min(used + kv.dropped if used > kv.n_keep else used, end + len(self.reply))
        return ContextMap(spans=spans, n_keep=kv.n_keep, evicted=list(self._evicted),
                          cached_end=cached, restored=list(self._restored), cut=self.cut)
