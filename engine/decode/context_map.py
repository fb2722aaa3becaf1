"""Which tokens of each message the model still has: the ``context`` event.

Positions are *logical* (the conversation as rendered, nothing evicted: see
``kv_window``), so a message keeps its span however the window slides. A message's span
runs from its text's first token to its end-of-turn token, included; the turn headers
between messages (and the reply's, at the prompt's end) belong to none.

Where each text starts is found once per turn, when the first event needs it (after
the prefill's first eviction, or as the reply ends), never before the prompt is read:
each message's text is looked up in order in the rendered prompt, whose tokens, spelled
out, give every byte its token. A message not found there verbatim (a template that
rewrites it), or a prompt its tokens do not spell, falls back to rendering the
conversation up to that message and tokenizing it, which costs a tokenization per
message; the starts of messages the last turn already placed are kept.
"""

from __future__ import annotations

import ctypes
from bisect import bisect_right
from collections.abc import Sequence
from itertools import accumulate

import llama_cpp

from engine.api import ChatMessage
from engine.decode.kv_cache import KVCache, Prompt
from engine.decode.turn_state import common_prefix
from engine.events import ContextMap, Eviction

Range = tuple[int, int]
HEADER_TOKENS = 16
"""How far before a message's text the end of the turn before it is looked for."""
NEEDLE_BYTES = 256
"""How much of a message's text is looked up in the prompt."""


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
        self._prompt = Prompt("", [], 0)
        self._starts: list[int] = []
        """Where each message's text starts (the first ``_known`` until placed)."""
        self._known = 0
        self._spans: list[Range] | None = None
        self._evicted: list[tuple[int, int, str]] = []
        self._restored: list[Range] = []
        self._pieces: dict[int, bytes] = {}

    def begin(self, messages: Sequence[ChatMessage], prompt: Prompt) -> None:
        """The turn's prompt is placed: what was restored, and whether the record of
        evictions still describes its window. Nothing is tokenized here."""
        kv = self.cache.state
        shared = common_prefix(self._prompt.logical, prompt.logical)
        known = 0
        while (known < min(len(self._starts), len(messages))
               and self._messages[known] == messages[known]
               and self._starts[known] <= shared):
            known += 1
        self._messages, self._prompt, self._known = list(messages), prompt, known
        self._starts, self._spans = self._starts[:known], None
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

    def evicted(self, ev: Eviction) -> None:
        """Record an eviction (its span starts after the kept prefix, in window terms)."""
        start = ev.kept_tokens + ev.evicted_total - ev.evicted_tokens
        self._evicted.append((start, start + ev.evicted_tokens, ev.reason))

    def event(self) -> ContextMap:
        """The map as the cache stands now."""
        kv = self.cache.state
        end = len(self._prompt.logical)
        spans = [(m.role, s, e) for m, (s, e) in zip(self._messages, self._message_spans(),
                                                      strict=True)]
        spans.append(("assistant", end, end + len(self.reply)))
        used = self.cache.used
        # Drafts being verified are in the cells for a moment: not part of the reply yet.
        cached = min(used + kv.dropped if used > kv.n_keep else used, end + len(self.reply))
        return ContextMap(spans=spans, n_keep=kv.n_keep, evicted=list(self._evicted),
                          cached_end=cached, restored=list(self._restored), cut=self.cut)

    # -- where the messages are ---------------------------------------------------------

    def _message_spans(self) -> list[Range]:
        if self._spans is None:
            logical = self._prompt.logical
            self._starts = self._locate(self._known)
            ends = [*self._starts[1:], len(logical)]
            self._spans = [(s, max(s, self._end_before(e, logical)))
                           for s, e in zip(self._starts, ends, strict=True)]
        return self._spans

    def _locate(self, first: int) -> list[int]:
        """Every message's start, those from ``first`` on found in the prompt."""
        messages, prompt = self._messages, self._prompt
        starts = self._starts[:first]
        text = prompt.text.encode("utf-8", "replace")
        offsets = self._byte_offsets(prompt.logical, text)
        cursor = 0
        for i in range(first, len(messages)):
            needle = messages[i].content.strip().encode("utf-8", "replace")[:NEEDLE_BYTES]
            at = text.find(needle, cursor) if offsets is not None else -1
            if at >= 0 and offsets is not None:
                start = max(0, bisect_right(offsets, at) - 1)
                cursor = at + len(needle)
            else:  # rendered some other way: render up to it and tokenize
                start = self.cache.message_start(messages[:i + 1], prompt.logical)
            starts.append(max(start, starts[-1] if starts else 0))
        return starts

    def _byte_offsets(self, logical: Sequence[int], text: bytes) -> list[int] | None:
        """Where each token's bytes start in ``text``; None when the tokens do not spell
        it (a BOS or a leading space the text lacks is allowed for)."""
        pieces = [self._piece(t) for t in logical]
        spelled = b"".join(pieces)
        lead = len(spelled) - len(text)
        if lead < 0 or not spelled.endswith(text):
            return None
        return [n - lead for n in accumulate((len(p) for p in pieces), initial=0)][:-1]

    def _piece(self, token: int) -> bytes:
        """The token's bytes with control tokens spelled out (as the template wrote them)."""
        piece = self._pieces.get(token)
        if piece is None:
            buf = ctypes.create_string_buffer(256)
            vocab = self.cache.lm.model.vocab
            n = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, True)
            piece = self._pieces[token] = buf.raw[:max(0, n)]
        return piece

    def _end_before(self, text_start: int, logical: Sequence[int]) -> int:
        """Where the turn before the text at ``text_start`` ends: right after the last
        end-of-turn token shortly before it; the text's start where no such token is
        near (a format without one)."""
        vocab = self.cache.lm.model.vocab
        for i in range(text_start - 1, max(-1, text_start - HEADER_TOKENS - 1), -1):
            if llama_cpp.llama_vocab_is_eog(vocab, logical[i]):
                return i + 1
        return text_start
