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

:class:`MessageSpans` (where the messages are), :func:`logical_span` (what an eviction
took) and :func:`context_map` (the event from a window's bookkeeping) serve any window;
:class:`ContextTracker` follows sequence 0's cache with them, and the batch path
(``engine.backends.batched``) each reply's sequence.
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
Evicted = tuple[int, int, str]
HEADER_TOKENS = 16
"""How far before a message's text the end of the turn before it is looked for."""
NEEDLE_BYTES = 256
"""How much of a message's text is looked up in the prompt."""


def logical_span(ev: Eviction) -> Evicted:
    """What ``ev`` took, in logical positions, with its reason: a window's evictions
    are contiguous after the kept prefix, so its span ends where all of them end."""
    start = ev.kept_tokens + ev.evicted_total - ev.evicted_tokens
    return start, start + ev.evicted_tokens, ev.reason


def with_earlier(record: list[Evicted], n_keep: int, dropped: int) -> list[Evicted]:
    """``record`` as the whole of a window's ``dropped`` tokens: what it lacks went
    before it (``earlier``: a previous turn, or a window taken over as it was)."""
    lacking = dropped - sum(e - s for s, e, _ in record)
    return [(n_keep, n_keep + lacking, "earlier"), *record] if lacking > 0 else list(record)


def context_map(messages: Sequence[ChatMessage], spans: Sequence[Range], prompt_len: int,
                reply_len: int, *, n_keep: int, cells_end: int, evicted: list[Evicted],
                restored: list[Range] | None = None, cut: int = 0) -> ContextMap:
    """The event for a prompt of ``prompt_len`` logical tokens whose messages lie at
    ``spans``, followed by ``reply_len`` tokens of reply; ``cells_end``: the logical
    position after the window's last cell (cells being verified, not part of the reply
    yet, are left out)."""
    out = [(m.role, s, e) for m, (s, e) in zip(messages, spans, strict=True)]
    out.append(("assistant", prompt_len, prompt_len + reply_len))
    return ContextMap(spans=out, n_keep=n_keep, evicted=evicted,
                      cached_end=min(cells_end, prompt_len + reply_len),
                      restored=list(restored or []), cut=cut)


def cells_end(used: int, n_keep: int, dropped: int) -> int:
    """The logical position after the last of ``used`` cells of a window that dropped
    ``dropped`` tokens after its first ``n_keep``."""
    return used + dropped if used > n_keep else used


class MessageSpans:
    """Where each message of a turn's prompt lies. ``cache`` lends the model (token
    pieces, end-of-turn tokens) and the fallback that renders up to a message."""

    def __init__(self, cache: KVCache, pieces: dict[int, bytes] | None = None) -> None:
        self.cache = cache
        self._messages: list[ChatMessage] = []
        self._prompt = Prompt("", [], 0)
        self._starts: list[int] = []
        """Where each message's text starts (the first ``_known`` until placed)."""
        self._known = 0
        self._spans: list[Range] | None = None
        self._pieces = {} if pieces is None else pieces
        """Each token's bytes as spelled out: shareable between instances of a model."""

    @property
    def prompt(self) -> Prompt:
        return self._prompt

    @property
    def messages(self) -> list[ChatMessage]:
        return self._messages

    def begin(self, messages: Sequence[ChatMessage], prompt: Prompt) -> int:
        """A new turn's prompt; the starts of the messages the last turn placed that
        it keeps (the same messages, in the tokens both share) are kept. Returns how
        many tokens the two prompts share. Nothing is tokenized here."""
        shared = common_prefix(self._prompt.logical, prompt.logical)
        known = 0
        while (known < min(len(self._starts), len(messages))
               and self._messages[known] == messages[known]
               and self._starts[known] <= shared):
            known += 1
        self._messages, self._prompt, self._known = list(messages), prompt, known
        self._starts, self._spans = self._starts[:known], None
        return shared

    def spans(self) -> list[Range]:
        """Each message's ``[start, end)``, found on the first call of a turn."""
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


class ContextTracker:
    """Follows one cache: where its conversation's messages start, and what each
    eviction took (logical spans, with its reason)."""

    def __init__(self, cache: KVCache) -> None:
        self.cache = cache
        self.reply: list[int] = []
        """The reply's tokens so far (the turn's own list, which grows as it streams)."""
        self.cut = 0
        """Tokens of this turn's message cut to fit (``prompt_truncated``)."""
        self.where = MessageSpans(cache)
        self._evicted: list[Evicted] = []
        self._restored: list[Range] = []

    def begin(self, messages: Sequence[ChatMessage], prompt: Prompt) -> None:
        """The turn's prompt is placed: what was restored, and whether the record of
        evictions still describes its window. Nothing is tokenized here."""
        kv = self.cache.state
        shared = self.where.begin(messages, prompt)
        if not (self._evicted and self._evicted[0][0] == kv.n_keep
                and sum(e - s for s, e, _ in self._evicted) == kv.dropped
                and shared >= kv.n_keep + kv.dropped):
            self._evicted = with_earlier([], kv.n_keep, kv.dropped)
        held = self.cache.restored
        self._restored = [(0, min(held, kv.n_keep))] if held else []
        if held > kv.n_keep:
            self._restored.append((kv.n_keep + kv.dropped, held + kv.dropped))
        self.reply, self.cut = [], 0

    def evicted(self, ev: Eviction) -> None:
        """Record an eviction (its span starts after the kept prefix, in window terms)."""
        self._evicted.append(logical_span(ev))

    def event(self) -> ContextMap:
        """The map as the cache stands now."""
        kv, where = self.cache.state, self.where
        # Drafts being verified are in the cells for a moment: context_map leaves them.
        return context_map(where.messages, where.spans(), len(where.prompt.logical),
                           len(self.reply), n_keep=kv.n_keep,
                           cells_end=cells_end(self.cache.used, kv.n_keep, kv.dropped),
                           evicted=list(self._evicted), restored=self._restored,
                           cut=self.cut)
