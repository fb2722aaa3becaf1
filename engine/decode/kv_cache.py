"""The KV cache of sequence 0 and the bookkeeping that names its cells.

``KVState.tokens`` is the truth about the cache: position ``i`` holds ``tokens[i]``.
Every change to the cells goes through here (``wrote`` after a decode, ``rewind``,
``evict``), so the two stay in step; ``sync_after_failure`` restores that after a
decode that failed half way.

When the conversation outgrows the context, ``evict`` slides the window in place:
the kept prefix stays, the oldest span after it leaves, and the rest is shifted down
with llama.cpp's memory API instead of being evaluated again (see ``kv_window``).

A conversation that does not extend the cached one goes through the state cache
(``engine/cache``) when there is one: the cached sequence is saved if the switch would
lose cells of it, and a saved state that shares more of the new prompt is restored in
its place, cut to the shared prefix.

Nothing here emits: a method with something to tell returns the event (or, for the
state cache, keeps it for ``take_notes``), and the generator sends it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import llama_cpp

from engine.api import ChatMessage, ChatRequest
from engine.cache.entry import Snapshot
from engine.cache.pool import StateCache
from engine.cache.sequence import SeqStates, window_holds
from engine.config import KVCacheConfig
from engine.decode.kv_window import Span, choose_span, turn_boundaries, window
from engine.decode.turn_state import KVState, PendingEviction, TurnStats, common_prefix
from engine.events import Eviction, EvictionReason, KVUsage, PromptTruncated, StateCacheNote
from engine.model.loader import LoadedModel

SEQ = 0
MIN_TAIL = 16
"""Newest prompt tokens no eviction may touch: the reply's turn header and the end
of the message it answers."""
_SENTINEL = "\ue000"  # a private-use character no template or tokenizer gives meaning to


@dataclass
class Prompt:
    """A turn's prompt as the conversation sees it, before any window is cut."""

    text: str
    """The rendered conversation."""
    logical: list[int]
    """Its tokens: every turn, nothing evicted."""
    new_from: int
    """Where this turn's own tokens start in ``logical``: what comes before is history,
    which may be evicted without telling the user their message was cut."""


class KVCache:
    """Which tokens the cells of sequence 0 hold, and how the window slides."""

    def __init__(self, lm: LoadedModel, policy: KVCacheConfig,
                 states: StateCache | None = None) -> None:
        self.lm = lm
        self.policy = policy
        self.state = KVState()
        self.states = SeqStates(states, lm, policy) if states and states.enabled else None
        self.restored = 0
        """Cells this turn's prompt got from a saved state."""
        self.prompt_end = 0
        """Cells of the last prompt, where its reply starts; 0 after an eviction moved
        them."""
        self._pending: PendingEviction | None = None
        self._unshifted = False
        """An eviction moved cells and no decode has applied llama.cpp's shift yet: the
        sequence cannot be saved as it is."""
        self._stats: TurnStats | None = None

    @property
    def used(self) -> int:
        """Cells in use: the next decode writes at this position."""
        return len(self.state.tokens)

    # -- a turn -------------------------------------------------------------------

    def open_turn(self, stats: TurnStats) -> None:
        """Count this turn's evictions into ``stats`` until ``close_turn``."""
        self._stats = stats

    def close_turn(self) -> Eviction | None:
        """The event of an eviction no decode followed (a cancel, or the end)."""
        self._stats = None
        return self.report_eviction(0.0, 0)

    def place(self, messages: Sequence[ChatMessage]) -> Prompt:
        """Tokenize the conversation against what the cache holds. A conversation that
        does not extend the last turn's (another one, or the first turn) starts a
        fresh window, with its own kept prefix."""
        text = self.lm.chat_format.render(messages)
        kv = self.state
        self.restored = 0
        if not (kv.rendered_text and text.startswith(kv.rendered_text)):
            logical = self._tokenize_fresh(text)
            if self.states is not None:
                self._switch(text, logical)
            elif kv.dropped:  # past the kept prefix the cells hold another history
                self.rewind(min(common_prefix(kv.tokens, logical), kv.n_keep))
            if not (kv.rendered_text and text.startswith(kv.rendered_text)):
                kv.n_keep, kv.dropped = self.count_kept(messages, logical), 0
                return Prompt(text, logical, self.message_start(messages, logical))
        # Extend the last turn's tokens so the reply keeps the tokens it was generated
        # as (re-tokenizing its text may split it differently).
        suffix = text[len(kv.rendered_text):]
        new = self.lm.tokenize(suffix, add_bos=False)
        logical = kv.rendered_tokens + new
        return Prompt(text, logical,
                      len(kv.rendered_tokens) + self._header_tokens(messages, new))

    def _snapshot(self) -> Snapshot:
        kv = self.state
        return Snapshot(list(kv.tokens), kv.n_keep, kv.dropped, kv.rendered_text,
                        list(kv.rendered_tokens), self.prompt_end)

    def _switch(self, text: str, fresh: list[int]) -> None:
        """Another conversation: keep what the cells share with it, or restore a saved
        state that shares more (saving the cells first if they would be lost)."""
        assert self.states is not None
        kv = self.state
        got = self.states.switch(self._snapshot(), text, fresh, can_save=not self._unshifted)
        kv.rendered_text, kv.rendered_tokens = "", []
        if got.snap is None:
            self.rewind(got.keep)
            return
        self._unshifted = False
        kv.tokens[:] = got.snap.cells[:got.keep]
        self.restored = got.keep
        if got.via_text:
            kv.n_keep, kv.dropped = got.snap.n_keep, got.snap.dropped
            kv.rendered_text, kv.rendered_tokens = got.snap.text, list(got.snap.logical)

    def leave(self) -> None:
        """The conversation leaves the cache for good (the model is closed): save it."""
        if self.states is not None and self.used:
            self.states.leave(self._snapshot(), can_save=not self._unshifted)

    def take_notes(self) -> list[StateCacheNote]:
        """The state cache's events since the last call."""
        return self.states.pool.take_notes() if self.states is not None else []

    def record(self, text: str, logical: list[int]) -> None:
        """The turn ended: ``text`` is the conversation as rendered, reply included,
        and ``logical`` its tokens as the model saw them."""
        self.state.rendered_text, self.state.rendered_tokens = text, logical

    def _tokenize_fresh(self, text: str) -> list[int]:
        tokens = self.lm.tokenize(text, add_bos=True)
        if len(tokens) > 1 and tokens[0] == tokens[1] == self.lm.bos:
            tokens = tokens[1:]  # template wrote the BOS text and the tokenizer added one
        return tokens

    def count_kept(self, messages: Sequence[ChatMessage], prompt: list[int]) -> int:
        """Tokens never evicted: the sink tokens, and the system prompt as rendered.

        The system prompt's extent is found by rendering it before a sentinel message
        and matching the tokens up to the sentinel against the real prompt, so it works
        for any format (Gemma folds the system text into the first user turn).
        """
        keep = self.policy.sink_tokens
        system = [m for m in messages if m.role == "system" and m.content]
        if self.policy.keep_system_prompt and system:
            probe = self.lm.chat_format.render([*system, ChatMessage(role="user",
                                                                      content=_SENTINEL)])
            head = probe[:probe.find(_SENTINEL)] if _SENTINEL in probe else ""
            keep = max(keep, common_prefix(self._tokenize_fresh(head), prompt))
        # Whatever the system prompt, half the context stays free to slide.
        return min(keep, self.lm.n_ctx // 2, max(0, len(prompt) - MIN_TAIL))

    def _before_message(self, messages: Sequence[ChatMessage]) -> str | None:
        """The conversation rendered up to where the last message's text starts; None
        when the template does not show where (it rewrites the text)."""
        if not messages:
            return None
        probe = self.lm.chat_format.render([*messages[:-1], ChatMessage(
            role=messages[-1].role, content=_SENTINEL)])
        at = probe.find(_SENTINEL)
        return probe[:at] if at >= 0 else None

    def _header_tokens(self, messages: Sequence[ChatMessage], new: list[int]) -> int:
        """How many of a next turn's ``new`` tokens come before its message's text: the
        last reply's end of turn and the message's header, history a window may drop
        without the message having been cut."""
        rendered, head = self.state.rendered_text, self._before_message(messages)
        if head is None or not head.startswith(rendered):
            return 0
        return common_prefix(self.lm.tokenize(head[len(rendered):], add_bos=False), new)

    def message_start(self, messages: Sequence[ChatMessage], prompt: list[int]) -> int:
        """Where the last message's turn starts in ``prompt``."""
        head = self._before_message(messages)
        return 0 if head is None else common_prefix(self._tokenize_fresh(head), prompt)

    def reserve_for(self, req: ChatRequest) -> int:
        """Cells kept free for the reply when the prompt is fitted."""
        wanted = req.reserve if req.reserve is not None else self.policy.reply_reserve
        if wanted is None:
            wanted = min(req.sampling.max_tokens, self.lm.n_ctx // 4)
        return max(0, min(wanted, req.sampling.max_tokens, self.lm.n_ctx // 2))

    # -- room ---------------------------------------------------------------------

    def fit(self, prompt: Prompt, reserve: int) -> tuple[list[int], PromptTruncated | None]:
        """The window of the prompt to prefill, evicting first if it and ``reserve``
        cells for the reply would not fit; with the note to send when the span had to
        reach into this turn's own tokens."""
        kv, n_ctx, logical = self.state, self.lm.n_ctx, prompt.logical
        tokens = window(logical, kv.n_keep, kv.dropped)
        room = n_ctx - reserve
        if len(tokens) <= room or not self.policy.evict:
            return tokens, None  # the generator reports prompt_too_long / context_full
        # Cells past what the new window shares with the cache are stale: drop them so
        # only cells that belong to the window get shifted.
        self.rewind(common_prefix(kv.tokens, tokens))
        limit = len(tokens) - MIN_TAIL
        need = min(len(tokens) - room, limit - kv.n_keep)
        if need <= 0:
            return tokens, None
        bounds = turn_boundaries(tokens, self._is_eog, kv.n_keep)
        self.evict(choose_span(len(tokens), kv.n_keep, need, need, bounds, limit), "prompt")
        note = None
        cut = kv.n_keep + kv.dropped - max(prompt.new_from, kv.n_keep)
        if cut > 0:
            added = len(logical) - prompt.new_from
            note = PromptTruncated(
                message_tokens=added, cut_tokens=cut, n_ctx=n_ctx,
                message=f"the message is {added} tokens and the context holds {n_ctx} with "
                        f"{reserve} kept for the reply: its first {cut} tokens were cut")
        return window(logical, kv.n_keep, kv.dropped), note

    def room_for(self, drafts: list[int]) -> list[int] | None:
        """The drafts that fit after the pending token, evicting if the policy allows;
        None when not even the pending token fits."""
        used, n_ctx = self.used, self.lm.n_ctx
        need = 1 + len(drafts)
        if used + need <= n_ctx:
            return drafts
        if self.policy.evict and used - self.state.n_keep > need:
            self.make_room(need)
            return drafts
        if used + 1 > n_ctx:
            return None
        return drafts[:n_ctx - used - 1]

    def make_room(self, need: int = 1) -> None:
        """Free ``need`` cells for the next step by sliding the window (the reply
        outgrew it)."""
        kv = self.state
        evictable = len(kv.tokens) - kv.n_keep
        target = max(need, int(evictable * self.policy.discard_fraction))
        bounds = turn_boundaries(kv.tokens, self._is_eog, kv.n_keep)
        # The newest token stays: its logits are the ones being sampled from.
        self.evict(choose_span(len(kv.tokens), kv.n_keep, need, target, bounds,
                               len(kv.tokens) - 1), "generation")

    def _is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.lm.model.vocab, token))

    # -- cells --------------------------------------------------------------------

    def reuse(self, prompt: list[int]) -> int:
        """Keep the cached prefix ``prompt`` shares, less at least its last token (whose
        logits the first sample needs fresh); returns how many positions stay."""
        reused = min(common_prefix(self.state.tokens, prompt), len(prompt) - 1)
        self.rewind(reused)
        if not window_holds(self.lm, reused):
            # Cells restored from a saved state: the sliding-window layers hold the last
            # window before the saved end only. Attending without the rest would give
            # another reply than evaluating the prompt does; no shorter prefix can do
            # better, so the prompt is evaluated from the start.
            self.rewind(0)
            reused = 0
        self.prompt_end = len(prompt)
        return reused

    def wrote(self, tokens: list[int], elapsed_s: float) -> Eviction | None:
        """A decode of ``elapsed_s`` put ``tokens`` at the next positions; the event of
        an eviction waiting for it (llama.cpp applies the shift inside that decode)."""
        self.state.tokens.extend(tokens)
        self._unshifted = False
        return self.report_eviction(elapsed_s, len(tokens))

    def rewind(self, n_keep: int) -> None:
        """Drop every cached position from ``n_keep`` on."""
        if n_keep < len(self.state.tokens):
            self.lm.ctx.kv_cache_seq_rm(SEQ, n_keep, -1)
            del self.state.tokens[n_keep:]

    def evict(self, span: Span, reason: EvictionReason) -> None:
        """Drop window positions ``[span.start, span.end)`` and shift what follows down.

        Only cells in the cache move: a span reaching past the cached tokens (a prompt
        not evaluated yet) just drops the rest from the window. llama.cpp applies the
        RoPE shift lazily, inside the next decode, which reports the event.
        """
        kv = self.state
        used = len(kv.tokens)
        cached_end = min(span.end, used)
        started = time.perf_counter()
        if span.start < used:
            self.lm.ctx.kv_cache_seq_rm(SEQ, span.start, cached_end)
            if span.end < used:
                # positions [end, used) become [start, used - size)
                self.lm.ctx.kv_cache_seq_shift(SEQ, span.end, -1, -span.size)
                self._unshifted = True
            del kv.tokens[span.start:cached_end]
        kv.dropped += span.size
        self.prompt_end = 0
        if self._stats is not None:
            self._stats.evictions += 1
            self._stats.evicted_tokens += span.size
        self._pending = PendingEviction(reason, span, max(0, cached_end - span.start),
                                        max(0, used - span.end), used,
                                        time.perf_counter() - started)

    def report_eviction(self, shift_s: float, shift_tokens: int) -> Eviction | None:
        """The event of the eviction waiting for a decode, if one is: ``shift_tokens``
        were decoded in ``shift_s`` with the shift applied."""
        ev, self._pending = self._pending, None
        if ev is None:
            return None
        kv = self.state
        return Eviction(
            reason=ev.reason, evicted_tokens=ev.span.size, start=ev.span.start,
            end=ev.span.end, kept_tokens=kv.n_keep, shifted_tokens=ev.shifted,
            at_turn_boundary=ev.span.at_turn_boundary, used_before=ev.used_before,
            used_after=len(kv.tokens) - shift_tokens, elapsed_s=ev.elapsed_s,
            shift_s=shift_s, shift_tokens=shift_tokens, evicted_total=kv.dropped)

    def sync_after_failure(self) -> None:
        """A decode records tokens only once llama.cpp took them, so a failed batch may
        have left cells past ``tokens``: drop them, and the rendered prefix too."""
        self.lm.ctx.kv_cache_seq_rm(SEQ, self.used, -1)
        self.record("", [])

    def usage(self, reserved: int) -> KVUsage:
        """The cache's fill, with ``reserved`` cells promised to the reply."""
        used, n_ctx, per = self.used, self.lm.n_ctx, self.lm.bytes_per_cell
        return KVUsage(used_cells=used, reserved_cells=reserved, n_ctx=n_ctx,
                       bytes_per_cell=per, used_bytes=used * per, total_bytes=n_ctx * per,
                       kept_cells=self.state.n_keep, evicted_total=self.state.dropped)
