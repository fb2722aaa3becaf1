"""The token loop: prefill what is new, then sample and decode one token at a time.

Runs on the engine thread only. ``KVState.tokens`` is the truth about the KV cache of
sequence 0: position ``i`` holds ``tokens[i]``. Every path out of a turn, including a
failed decode or a cancel, leaves the two in step (see ``rewind``).

When the conversation outgrows the context, ``evict`` slides the window in place:
the kept prefix stays, the oldest span after it leaves, and the rest is shifted down
with llama.cpp's memory API instead of being evaluated again (see ``kv_window``).
"""

from __future__ import annotations

import codecs
import threading
import time
from collections.abc import Callable, Sequence

import llama_cpp
from llama_cpp import _internals

from engine.api import ChatMessage, ChatRequest
from engine.config import KVCacheConfig
from engine.decode.kv_window import Span, choose_span, turn_boundaries, window
from engine.decode.sampling.choice import Sampler, SamplerChoice, near_tie
from engine.decode.speculation import SpecController
from engine.decode.turn_state import (
    KVState,
    PendingEviction,
    Reply,
    TurnStats,
    common_prefix,
    done_event,
)
from engine.errors import DecodeError
from engine.events import (
    Error,
    Event,
    Eviction,
    EvictionReason,
    FinishReason,
    KVUsage,
    Progress,
    PromptEvaluated,
    PromptTruncated,
    TokenChunk,
)
from engine.model.loader import LoadedModel

__all__ = ["ChatRequest", "Generator", "KVState"]

SEQ = 0
PROGRESS_EVERY = 16
"""Tokens between progress and kv events while a reply streams."""
SPEC_EVENT_EVERY = 8
"""Verification rounds between spec events (a switch off or on is sent at once)."""
MIN_TAIL = 16
"""Newest prompt tokens no eviction may touch: the reply's turn header and the end
of the message it answers."""
_SENTINEL = "\ue000"  # a private-use character no template or tokenizer gives meaning to


class Generator:
    """Owns the batch and the cache bookkeeping for one loaded model."""

    def __init__(self, lm: LoadedModel, policy: KVCacheConfig | None = None,
                 spec: SpecController | None = None, *,
                 greedy_in_graph: bool = False) -> None:
        self.lm = lm
        self.policy = policy or KVCacheConfig()
        self.spec = spec
        self.samplers = SamplerChoice(lm, SEQ, greedy_in_graph=greedy_in_graph)
        self.n_vocab = lm.model.n_vocab()
        self.kv = KVState()
        self.batch = _internals.LlamaBatch(n_tokens=lm.n_batch, embd=0, n_seq_max=1)
        self._emit: Callable[[Event], None] = _drop
        self._pending: PendingEviction | None = None
        self._stats: TurnStats | None = None

    def close(self) -> None:
        self.samplers.detach()
        self.batch.close()
        if self.spec is not None:
            self.spec.drafter.close()

    # -- prompt -------------------------------------------------------------------

    def tokenize_prompt(self, messages: Sequence[ChatMessage]) -> tuple[str, list[int], bool]:
        """The rendered prompt, its tokens, and whether they extend the last turn's."""
        text = self.lm.chat_format.render(messages)
        kv = self.kv
        if kv.rendered_text and text.startswith(kv.rendered_text):
            # Extend the last turn's tokens so the reply keeps the tokens it was
            # generated as (re-tokenizing its text may split it differently).
            suffix = text[len(kv.rendered_text):]
            return text, kv.rendered_tokens + self.lm.tokenize(suffix, add_bos=False), True
        return text, self._tokenize_fresh(text), False

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

    def message_start(self, messages: Sequence[ChatMessage], prompt: list[int]) -> int:
        """Where the last message's turn starts in ``prompt``: what comes before it is
        history, which may be evicted without telling the user their message was cut."""
        if not messages:
            return 0
        probe = self.lm.chat_format.render([*messages[:-1], ChatMessage(
            role=messages[-1].role, content=_SENTINEL)])
        if _SENTINEL not in probe:
            return 0
        head = self._tokenize_fresh(probe[:probe.find(_SENTINEL)])
        return common_prefix(head, prompt)

    def fit(self, logical: list[int], new_from: int, reserve: int) -> list[int]:
        """The window of ``logical`` to prefill, evicting first if it and ``reserve``
        cells for the reply would not fit. Emits PromptTruncated when the span had
        to reach into this turn's own tokens (from logical index ``new_from``)."""
        kv, n_ctx = self.kv, self.lm.n_ctx
        prompt = window(logical, kv.n_keep, kv.dropped)
        room = n_ctx - reserve
        if len(prompt) <= room:
            return prompt
        if not self.policy.evict:
            return prompt  # run() reports context_full / prompt_too_long
        # Cells past what the new window shares with the cache are stale: drop them so
        # only cells that belong to the window get shifted.
        self.rewind(common_prefix(kv.tokens, prompt))
        limit = len(prompt) - MIN_TAIL
        need = min(len(prompt) - room, limit - kv.n_keep)
        if need <= 0:
            return prompt
        bounds = turn_boundaries(prompt, self._is_eog, kv.n_keep)
        self.evict(choose_span(len(prompt), kv.n_keep, need, need, bounds, limit), "prompt")
        cut = kv.n_keep + kv.dropped - max(new_from, kv.n_keep)
        if cut > 0:
            added = len(logical) - new_from
            self._emit(PromptTruncated(
                message_tokens=added, cut_tokens=cut, n_ctx=n_ctx,
                message=f"the message is {added} tokens and the context holds {n_ctx} with "
                        f"{reserve} kept for the reply: its first {cut} tokens were cut"))
        return window(logical, kv.n_keep, kv.dropped)

    def prefill(self, prompt: list[int], cancel: threading.Event) -> tuple[int, int]:
        """Make the cache hold ``prompt``, evaluating only what it lacks.

        Returns (reused, evaluated). At least the last prompt token is evaluated so
        its logits are fresh for the first sample.
        """
        reused = common_prefix(self.kv.tokens, prompt)
        reused = min(reused, len(prompt) - 1)
        self.rewind(reused)
        pos = reused
        while pos < len(prompt):
            if cancel.is_set():
                break
            chunk = prompt[pos : pos + self.lm.n_batch]
            # positions pos..pos+len(chunk)-1; logits only for the chunk's last token
            self.decode(chunk)
            pos += len(chunk)
        return reused, pos - reused

    # -- cache --------------------------------------------------------------------

    def warm_up(self) -> None:
        """One throw-away decode at load when an in-graph sampler is attached: attaching
        makes llama.cpp re-plan its graphs on the next decode (tens of ms on a GPU),
        which would otherwise land in the first reply's time to first token."""
        if self.kv.tokens or not self.samplers.prepare():
            return
        bos = self.lm.model.token_bos()
        try:
            self.decode([bos if bos >= 0 else 0])  # position 0, logits for its row
        finally:
            self.rewind(0)

    def decode(self, tokens: list[int], logits_all: bool = False) -> None:
        """Evaluate ``tokens`` at the next positions and append them to the cache.
        Logits come back for the last token, or for all of them with ``logits_all``."""
        n_past = len(self.kv.tokens)
        self.batch.set_batch(tokens, n_past=n_past, logits_all=logits_all)
        started = time.perf_counter()
        try:
            self.lm.ctx.decode(self.batch)
        except RuntimeError as exc:
            raise DecodeError(f"llama.cpp could not evaluate {len(tokens)} tokens "
                              f"at position {n_past}: {exc}") from None
        elapsed = time.perf_counter() - started
        self.kv.tokens.extend(tokens)
        if self._stats is not None and self._stats.first_token_at:
            self._stats.decode_s += elapsed
        if self._pending is not None:
            self._report_eviction(elapsed, len(tokens))

    def rewind(self, n_keep: int) -> None:
        """Drop every cached position from ``n_keep`` on."""
        if n_keep < len(self.kv.tokens):
            self.lm.ctx.kv_cache_seq_rm(SEQ, n_keep, -1)
            del self.kv.tokens[n_keep:]

    def evict(self, span: Span, reason: EvictionReason) -> None:
        """Drop window positions ``[span.start, span.end)`` and shift what follows down.

        Only cells in the cache move: a span reaching past the cached tokens (a prompt
        not evaluated yet) just drops the rest from the window. llama.cpp applies the
        RoPE shift lazily, inside the next decode, which reports the event.
        """
        kv = self.kv
        used = len(kv.tokens)
        cached_end = min(span.end, used)
        started = time.perf_counter()
        if span.start < used:
            self.lm.ctx.kv_cache_seq_rm(SEQ, span.start, cached_end)
            if span.end < used:
                # positions [end, used) become [start, used - size)
                self.lm.ctx.kv_cache_seq_shift(SEQ, span.end, -1, -span.size)
            del kv.tokens[span.start:cached_end]
        kv.dropped += span.size
        if self._stats is not None:
            self._stats.evictions += 1
            self._stats.evicted_tokens += span.size
        self._pending = PendingEviction(reason, span, max(0, cached_end - span.start),
                                        max(0, used - span.end), used,
                                        time.perf_counter() - started)

    def _report_eviction(self, shift_s: float, shift_tokens: int) -> None:
        ev, self._pending = self._pending, None
        assert ev is not None
        self._emit(Eviction(
            reason=ev.reason, evicted_tokens=ev.span.size, start=ev.span.start,
            end=ev.span.end, kept_tokens=self.kv.n_keep, shifted_tokens=ev.shifted,
            at_turn_boundary=ev.span.at_turn_boundary, used_before=ev.used_before,
            used_after=len(self.kv.tokens) - shift_tokens, elapsed_s=ev.elapsed_s,
            shift_s=shift_s, shift_tokens=shift_tokens, evicted_total=self.kv.dropped))

    def make_room(self, need: int = 1) -> None:
        """Free ``need`` cells for the next step by sliding the window (the reply
        outgrew it)."""
        kv = self.kv
        evictable = len(kv.tokens) - kv.n_keep
        target = max(need, int(evictable * self.policy.discard_fraction))
        bounds = turn_boundaries(kv.tokens, self._is_eog, kv.n_keep)
        # The newest token stays: its logits are the ones being sampled from.
        self.evict(choose_span(len(kv.tokens), kv.n_keep, need, target, bounds,
                               len(kv.tokens) - 1), "generation")

    def sync_after_failure(self) -> None:
        """``decode`` records tokens only once llama.cpp took them, so a failed batch may
        have left cells past ``kv.tokens``: drop them, and the rendered prefix too."""
        self.lm.ctx.kv_cache_seq_rm(SEQ, len(self.kv.tokens), -1)
        self.kv.rendered_text, self.kv.rendered_tokens = "", []

    def kv_usage(self, reserved: int) -> KVUsage:
        used, n_ctx, per = len(self.kv.tokens), self.lm.n_ctx, self.lm.bytes_per_cell
        return KVUsage(used_cells=used, reserved_cells=reserved, n_ctx=n_ctx,
                       bytes_per_cell=per, used_bytes=used * per, total_bytes=n_ctx * per,
                       kept_cells=self.kv.n_keep, evicted_total=self.kv.dropped)

    def _is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.lm.model.vocab, token))

    def reserve_for(self, req: ChatRequest) -> int:
        wanted = req.reserve if req.reserve is not None else self.policy.reply_reserve
        if wanted is None:
            wanted = min(req.sampling.max_tokens, self.lm.n_ctx // 4)
        return max(0, min(wanted, req.sampling.max_tokens, self.lm.n_ctx // 2))

    # -- the turn -----------------------------------------------------------------

    def run(self, req: ChatRequest, emit: Callable[[Event], None],
            cancel: threading.Event) -> None:
        stats = TurnStats(started=time.perf_counter())
        self._emit, self._stats = emit, stats
        text, logical, extends = self.tokenize_prompt(req.messages)
        kv, n_ctx = self.kv, self.lm.n_ctx
        if extends:
            new_from = len(kv.rendered_tokens)
        else:  # another conversation, or the first turn: a fresh window
            kv.n_keep, kv.dropped = self.count_kept(req.messages, logical), 0
            new_from = self.message_start(req.messages, logical)
        reserve = self.reserve_for(req)
        sampler = self.sampler_for(req)  # first: a bad grammar fails before any work
        ok = False
        try:
            prompt = self.fit(logical, new_from, reserve)
            if len(prompt) >= n_ctx:
                emit(Error(code="prompt_too_long",
                           message=f"the conversation is {len(prompt)} tokens; the context "
                                   f"holds {n_ctx} (raise --ctx or start a new conversation)"))
                ok = True
                return
            stats.prompt_tokens = len(prompt)
            if self.spec is not None:
                self.spec.begin_reply(logical)
            with self.lm.prompt_threads():
                stats.reused_tokens, stats.evaluated_tokens = self.prefill(prompt, cancel)
            stats.prefill_s = time.perf_counter() - stats.started
            if cancel.is_set():
                emit(done_event(stats, "cancelled", ""))
                ok = True
                return
            emit(PromptEvaluated(prompt_tokens=stats.prompt_tokens,
                                 reused_tokens=stats.reused_tokens,
                                 evaluated_tokens=stats.evaluated_tokens,
                                 prefill_s=stats.prefill_s))
            emit(self.kv_usage(min(reserve, n_ctx - len(prompt))))
            reply_tokens, reason = self.generate(req, cancel, stats, sampler)
            reply = b"".join(map(self.lm.token_piece, reply_tokens)).decode("utf-8", "replace")
            kv.rendered_text = text + reply
            kv.rendered_tokens = logical + reply_tokens
            emit(self.kv_usage(0))
            emit(done_event(stats, reason, reply))
            ok = True
        finally:
            self.samplers.release(sampler)
            if self._pending is not None:  # no decode followed (cancelled, or the end)
                self._report_eviction(0.0, 0)
            self._emit, self._stats = _drop, None
            if not ok:
                self.sync_after_failure()

    def sampler_for(self, req: ChatRequest) -> Sampler:
        return self.samplers.for_request(req)

    def generate(self, req: ChatRequest, cancel: threading.Event, stats: TurnStats,
                 sampler: Sampler) -> tuple[list[int], FinishReason]:
        """Sample until end of turn, max_tokens, cancel or a full cache.

        One token is always *pending*: sampled and emitted, not yet in the cache. Each
        step either decodes it alone (plain) or together with drafted tokens (a
        verification round), and yields the next pending token.
        """
        reply = Reply(stats, codecs.getincrementaldecoder("utf-8")(errors="replace"))
        spec = self.spec_for(req)
        # The near-tie guard keeps greedy speculation identical to plain decoding; with
        # repeat penalties (or a grammar) the sampler's own state would keep the draw
        # the guard discards.
        # A batch-invariant load needs no guard: its batched rows are the one-token rows.
        exact = (req.sampling.temperature <= 0 and req.sampling.repeat_penalty == 1.0
                 and req.constraint is None and not self.lm.invariant_rows)
        guard = spec.config.tie_margin if exact and spec is not None and spec.config.exact \
            else 0.0
        try:
            token = sampler.sample(self.lm.ctx, -1)  # from the prefill's last logits
            if spec is not None:
                spec.drafter.extend([token])  # drafters see every emitted token
            while True:
                if reason := self.admit(reply, token, req):
                    if reason != "stop":
                        self.publish(reply, token, req)
                    return reply.tokens, reason
                if cancel.is_set():
                    self.publish(reply, token, req)
                    return reply.tokens, "cancelled"
                started = time.perf_counter()
                drafts = spec.propose(self.kv.tokens, token) if spec else []
                drafts = self.room_for(drafts)
                if drafts is None:
                    self.publish(reply, token, req)
                    return reply.tokens, "context_full"
                if not drafts:
                    try:
                        # Position len(kv.tokens); its logits feed the next sample. A GPU
                        # backend returns once the graph is queued, so the token's event
                        # is built while the device works, not between two graphs.
                        self.decode([token])
                    finally:
                        self.publish(reply, token, req)
                    token = sampler.sample(self.lm.ctx, -1)
                    if spec and (note := spec.after_plain(time.perf_counter() - started, token)):
                        self._emit(note)
                    continue
                self.publish(reply, token, req)
                base = len(self.kv.tokens)
                emitted = self.verify(token, drafts, sampler, guard)
                assert spec is not None
                if not emitted:  # the first row was a near tie: decide it plainly
                    self.decode([token])
                    token = sampler.sample(self.lm.ctx, -1)
                    emitted = [token]
                accepted = common_prefix(emitted, drafts)
                note = spec.after_round(time.perf_counter() - started, len(drafts), accepted,
                                        emitted)
                stats.drafted += len(drafts)
                stats.accepted += accepted
                if note.reason or spec.rounds % SPEC_EVENT_EVERY == 0:
                    self._emit(note)
                for i, emitted_token in enumerate(emitted[:-1]):
                    if reason := self.take(reply, emitted_token, req):
                        # The cache keeps what a plain loop would have decoded by now:
                        # the pending token and the drafts before this one.
                        self.rewind(base + 1 + i)
                        return reply.tokens, reason
                token = emitted[-1]
        finally:
            if spec and spec.rounds:
                self._emit(spec.stats())

    def spec_for(self, req: ChatRequest) -> SpecController | None:
        """The controller for this reply: ``auto`` stands aside for greedy replies, whose
        output a verification batch could change (llama.cpp's batched rows differ from
        one-token decodes, on CPU and CUDA alike: docs/speculative.md), unless the model
        was loaded batch-invariant; an explicit mode always speculates."""
        spec = self.spec
        if (spec is not None and spec.config.mode == "auto"
                and req.sampling.temperature <= 0 and not self.lm.invariant_rows):
            return None
        return spec

    def take(self, reply: Reply, token: int, req: ChatRequest) -> FinishReason | None:
        """Emit one sampled token; the reason to stop if the reply ends with it."""
        reason = self.admit(reply, token, req)
        if reason != "stop":
            self.publish(reply, token, req)
        return reason

    def admit(self, reply: Reply, token: int, req: ChatRequest) -> FinishReason | None:
        """Count one sampled token into the reply; the reason to stop if the reply ends
        with it ("stop": an end of turn, not part of the reply; "length": the last)."""
        stats = reply.stats
        now = time.perf_counter()
        if not stats.first_token_at:
            stats.first_token_at = now
        stats.last_token_at = now
        stats.sampled += 1
        if self.lm.ends_turn(token) and (not req.ignore_eos or req.constraint is not None):
            return "stop"  # a grammar's end ends the reply even when EOS is ignored
        reply.tokens.append(token)
        stats.completion_tokens = len(reply.tokens)
        return "length" if stats.completion_tokens >= req.sampling.max_tokens else None

    def publish(self, reply: Reply, token: int, req: ChatRequest) -> None:
        """The events for an admitted token: its text, and progress every few tokens."""
        stats, n = reply.stats, reply.stats.completion_tokens
        self._emit(TokenChunk(text=reply.utf8.decode(self.lm.token_piece(token)),
                              token_ids=[token]))
        if n % PROGRESS_EVERY == 0:
            span = stats.last_token_at - stats.first_token_at
            self._emit(Progress(completion_tokens=n,
                                tokens_per_s=(stats.sampled - 1) / span if span else 0.0))
            self._emit(self.kv_usage(min(req.sampling.max_tokens - n,
                                         self.lm.n_ctx - len(self.kv.tokens))))

    def room_for(self, drafts: list[int]) -> list[int] | None:
        """The drafts that fit after the pending token, evicting if the policy allows;
        None when not even the pending token fits."""
        kv, n_ctx = self.kv, self.lm.n_ctx
        need = 1 + len(drafts)
        if len(kv.tokens) + need <= n_ctx:
            return drafts
        if self.policy.evict and len(kv.tokens) - kv.n_keep > need:
            self.make_room(need)
            return drafts
        if len(kv.tokens) + 1 > n_ctx:
            return None
        return drafts[:n_ctx - len(kv.tokens) - 1]

    def verify(self, token: int, drafts: list[int], sampler: Sampler,
               guard: float) -> list[int]:
        """Evaluate the pending token and ``k`` drafts in one batch and return what the
        model itself chooses: the drafts it agrees with, then one token of its own. The
        last returned token is the new pending one (not in the cache).

        The batch holds positions base..base+k with logits for those k+1 rows only
        (row i predicts position base+i+1), never for the whole context. Acceptance:
        at each row the target's own sampler chain draws a token and the draft is kept
        only if it equals that draw. For a deterministic draft d this accepts d with
        probability p(d) and otherwise emits a draw from p restricted to tokens != d,
        which is speculative sampling's min(1, p/q) rule with q a point mass on d: the
        output has exactly the target's distribution.

        ``guard`` (greedy only): llama.cpp's kernels change with the batch size, and a
        batched row's logits may differ from the one-token decode by about a logit. A
        row whose choice is within ``guard`` of a runner-up is not trusted: the round
        stops before it and the plain loop decides that token, as it would have.
        """
        base = len(self.kv.tokens)
        self.decode([token, *drafts], logits_all=True)
        emitted: list[int] = []
        for row in range(len(drafts) + 1):
            choice = sampler.sample(self.lm.ctx, row)  # also feeds the chain's history
            if guard and near_tie(sampler, self.lm.ctx, row, choice, guard):
                break  # the last accepted draft (if any) becomes the pending token
            emitted.append(choice)
            if row == len(drafts) or choice != drafts[row]:
                break
        # Rejected drafts leave the cache, which keeps everything before the new pending
        # token: the old pending token and the accepted drafts before the last one.
        self.rewind(base + len(emitted))
        return emitted

def _drop(event: Event) -> None:
    """The emitter between turns: nothing listens."""
