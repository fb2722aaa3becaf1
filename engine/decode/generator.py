"""The token loop: prefill what is new, then sample and decode one token at a time.

Runs on the engine thread only. What each cache position holds, and how the window
slides when the conversation outgrows the context, is the :class:`KVCache`'s; this
loop decides what to evaluate and draws the reply from the logits. During a reply one
token is always *pending*: sampled and emitted, not yet in the cache.

Every event of a turn leaves through ``_emit``, the callable ``run`` was given; the
cache returns its events (evictions, a truncated prompt, its usage) for it to send.
"""

from __future__ import annotations

import codecs
import threading
import time
from collections.abc import Callable

from llama_cpp import _internals

from engine.api import ChatRequest
from engine.cache.pool import StateCache
from engine.config import KVCacheConfig
from engine.decode.context_map import ContextTracker
from engine.decode.kv_cache import SEQ, KVCache, Prompt
from engine.decode.sampling.choice import Sampler, SamplerChoice, near_tie
from engine.decode.speculation import SpecController
from engine.decode.turn_state import Turn, TurnStats, common_prefix, done_event
from engine.errors import DecodeError
from engine.events import Error, Event, FinishReason, Progress, PromptEvaluated, TokenChunk
from engine.model.loader import LoadedModel
from engine.model.template_limits import RenderCancelled, cancelled_by

__all__ = ["ChatRequest", "Generator"]

PROGRESS_EVERY = 16
"""Tokens between progress and kv events while a reply streams."""
SPEC_EVENT_EVERY = 8
"""Verification rounds between spec events (a switch off or on is sent at once)."""


class Generator:
    """Owns the batch, the samplers and the cache of one loaded model."""

    def __init__(self, lm: LoadedModel, policy: KVCacheConfig | None = None,
                 spec: SpecController | None = None, *,
                 greedy_in_graph: bool = False, states: StateCache | None = None) -> None:
        self.lm = lm
        self.spec = spec
        self.samplers = SamplerChoice(lm, SEQ, greedy_in_graph=greedy_in_graph)
        self.cache = KVCache(lm, policy or KVCacheConfig(), states)
        self.context = ContextTracker(self.cache)
        self.batch = _internals.LlamaBatch(n_tokens=lm.n_batch, embd=0, n_seq_max=1)
        self._emit: Callable[[Event], None] = _drop
        self._stats: TurnStats | None = None

    def close(self) -> None:
        self.cache.leave()  # the conversation's state outlives the context
        self.samplers.detach()
        self.batch.close()
        if self.spec is not None:
            self.spec.drafter.close()

    def warm_up(self) -> None:
        """One throw-away decode at load when an in-graph sampler is attached: attaching
        makes llama.cpp re-plan its graphs on the next decode (tens of ms on a GPU),
        which would otherwise land in the first reply's time to first token."""
        if self.cache.used or not self.samplers.prepare():
            return
        bos = self.lm.model.token_bos()
        try:
            self.decode([bos if bos >= 0 else 0])  # position 0, logits for its row
        finally:
            self.cache.rewind(0)

    # -- the turn -----------------------------------------------------------------

    def run(self, req: ChatRequest, emit: Callable[[Event], None],
            cancel: threading.Event) -> None:
        """Answer ``req``, sending its events to ``emit``. However the turn ends (done,
        cancelled, or a failed decode), the cache is left in step with its record."""
        stats = TurnStats(started=time.perf_counter())
        try:
            with cancelled_by(cancel):  # a slow template stops at Esc, not at its limit
                prompt = self.cache.place(req.messages)
        except RenderCancelled:
            self.cache.sync_after_failure()  # place may have moved the cache on
            emit(done_event(stats, "cancelled", ""))
            return
        self.context.begin(req.messages, prompt)
        for note in self.cache.take_notes():
            emit(note)
        if fallback := self.lm.chat_format.take_fallback():  # the template failed: said once
            emit(fallback)
        reserve = self.cache.reserve_for(req)
        turn = self.turn_for(req, stats)  # first: a bad grammar fails before any work
        self._emit, self._stats = emit, stats
        self.cache.open_turn(stats)
        ok = False
        try:
            self.respond(turn, prompt, reserve, cancel)
            ok = True
        finally:
            self.samplers.release(turn.sampler)
            if note := self.cache.close_turn():  # no decode followed (cancelled, or the end)
                self.context.evicted(note)
                self._emit(note)
            self._emit, self._stats = _drop, None
            if not ok:
                self.cache.sync_after_failure()

    def turn_for(self, req: ChatRequest, stats: TurnStats) -> Turn:
        """The loop's state for one reply to ``req``."""
        sampler = self.sampler_for(req)
        spec = self.spec_for(req)
        # The near-tie guard keeps greedy speculation identical to plain decoding; with
        # repeat penalties (or a grammar) the sampler's own state would keep the draw
        # the guard discards.
        # A batch-invariant load needs no guard: its batched rows are the one-token rows.
        exact = (req.sampling.temperature <= 0 and req.sampling.repeat_penalty == 1.0
                 and req.constraint is None and not self.lm.invariant_rows)
        guard = spec.config.tie_margin if exact and spec is not None and spec.config.exact \
            else 0.0
        return Turn(req, stats, sampler, spec, guard,
                    codecs.getincrementaldecoder("utf-8")(errors="replace"))

    def sampler_for(self, req: ChatRequest) -> Sampler:
        return self.samplers.for_request(req)

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

    def respond(self, turn: Turn, prompt: Prompt, reserve: int,
                cancel: threading.Event) -> None:
        """Fit the prompt with ``reserve`` cells to spare, prefill it, generate the
        reply, and record the conversation as the cache now holds it."""
        stats, n_ctx = turn.stats, self.lm.n_ctx
        tokens, note = self.cache.fit(prompt, reserve)
        self.context.reply = turn.tokens
        if note is not None:
            self.context.cut = note.cut_tokens
            self._emit(note)
        if len(tokens) >= n_ctx:
            self._emit(Error(code="prompt_too_long",
                             message=f"the conversation is {len(tokens)} tokens; the context "
                                     f"holds {n_ctx} (raise --ctx or start a new conversation)"))
            return
        stats.prompt_tokens = len(tokens)
        if self.spec is not None:
            self.spec.begin_reply(prompt.logical)
        with self.lm.prompt_threads():
            stats.reused_tokens, stats.evaluated_tokens = self.prefill(tokens, cancel)
        stats.prefill_s = time.perf_counter() - stats.started
        if cancel.is_set():
            self._emit(done_event(stats, "cancelled", ""))
            return
        self._emit(PromptEvaluated(prompt_tokens=stats.prompt_tokens,
                                   reused_tokens=stats.reused_tokens,
                                   evaluated_tokens=stats.evaluated_tokens,
                                   restored_tokens=min(self.cache.restored,
                                                       stats.reused_tokens),
                                   prefill_s=stats.prefill_s))
        self._emit(self.cache.usage(min(reserve, n_ctx - len(tokens))))
        reason = self.generate(turn, cancel)
        text = b"".join(map(self.lm.token_piece, turn.tokens)).decode("utf-8", "replace")
        self.cache.record(prompt.text + text, prompt.logical + turn.tokens)
        self._emit(self.cache.usage(0))
        self._emit(self.context.event())
        self._emit(done_event(stats, reason, text))

    # -- evaluation ---------------------------------------------------------------

    def prefill(self, prompt: list[int], cancel: threading.Event) -> tuple[int, int]:
        """Make the cache hold ``prompt``, evaluating only what it lacks.

        Returns (reused, evaluated). At least the last prompt token is evaluated so
        its logits are fresh for the first sample.
        """
        reused = self.cache.reuse(prompt)
        pos = reused
        while pos < len(prompt):
            if cancel.is_set():
                break
            chunk = prompt[pos : pos + self.lm.n_batch]
            # positions pos..pos+len(chunk)-1; logits only for the chunk's last token
            self.decode(chunk)
            pos += len(chunk)
        return reused, pos - reused

    def decode(self, tokens: list[int], logits_all: bool = False) -> None:
        """Evaluate ``tokens`` at the next positions and append them to the cache.
        Logits come back for the last token, or for all of them with ``logits_all``."""
        n_past = self.cache.used
        self.batch.set_batch(tokens, n_past=n_past, logits_all=logits_all)
        started = time.perf_counter()
        try:
            self.lm.ctx.decode(self.batch)
        except RuntimeError as exc:
            raise DecodeError(f"llama.cpp could not evaluate {len(tokens)} tokens "
                              f"at position {n_past}: {exc}") from None
        elapsed = time.perf_counter() - started
        evicted = self.cache.wrote(tokens, elapsed)
        if self._stats is not None and self._stats.first_token_at:
            self._stats.decode_s += elapsed
        if evicted is not None:
            self.context.evicted(evicted)
            self._emit(evicted)
            self._emit(self.context.event())

    # -- the reply ----------------------------------------------------------------

    def generate(self, turn: Turn, cancel: threading.Event) -> FinishReason:
        """Sample until end of turn, max_tokens, cancel or a full cache.

        Each step either decodes the pending token alone (plain) or together with
        drafted tokens (a verification round), and yields the next pending token.
        """
        spec = turn.spec
        try:
            token = turn.sampler.sample(self.lm.ctx, -1)  # from the prefill's last logits
            if spec is not None:
                spec.drafter.extend([token])  # drafters see every emitted token
            while True:
                reason, token = self.step(turn, token, cancel)
                if reason:
                    return reason
        finally:
            if spec and spec.rounds:
                self._emit(spec.stats())

    def step(self, turn: Turn, token: int,
             cancel: threading.Event) -> tuple[FinishReason | None, int]:
        """End the reply with the pending ``token``, or decode it and return the next
        pending token."""
        if reason := self.admit(turn, token):
            if reason != "stop":
                self.publish(turn, token)
            return reason, token
        if cancel.is_set():
            self.publish(turn, token)
            return "cancelled", token
        started = time.perf_counter()
        drafts = self.draft(turn, token)
        if drafts is None:
            self.publish(turn, token)
            return "context_full", token
        if not drafts:
            return None, self.decode_one(turn, token, started)
        return self.speculate(turn, token, drafts, started)

    def draft(self, turn: Turn, token: int) -> list[int] | None:
        """Tokens to verify after the pending one, as many as the cache has room for
        (evicting if it must); None when not even the pending token fits."""
        drafts = turn.spec.propose(self.cache.state.tokens, token) if turn.spec else []
        return self.cache.room_for(drafts)

    def decode_one(self, turn: Turn, token: int, started: float) -> int:
        """A plain step: decode the pending token alone and sample the next one."""
        try:
            # Position cache.used; its logits feed the next sample. A GPU backend
            # returns once the graph is queued, so the token's event is built while
            # the device works, not between two graphs.
            self.decode([token])
        finally:
            self.publish(turn, token)
        token = turn.sampler.sample(self.lm.ctx, -1)
        if turn.spec and (note := turn.spec.after_plain(time.perf_counter() - started,
                                                        token)):
            self._emit(note)
        return token

    def speculate(self, turn: Turn, token: int, drafts: list[int],
                  started: float) -> tuple[FinishReason | None, int]:
        """A verification round: the pending token and ``drafts`` in one batch; the
        reply's end if it comes within the round, else the next pending token."""
        spec, stats = turn.spec, turn.stats
        assert spec is not None
        self.publish(turn, token)
        base = self.cache.used  # the pending token's position
        emitted = self.verify(token, drafts, turn.sampler, turn.guard)
        if not emitted:  # the first row was a near tie: decide it plainly
            self.decode([token])
            emitted = [turn.sampler.sample(self.lm.ctx, -1)]
        accepted = common_prefix(emitted, drafts)
        note = spec.after_round(time.perf_counter() - started, len(drafts), accepted, emitted)
        stats.drafted += len(drafts)
        stats.accepted += accepted
        if note.reason or spec.rounds % SPEC_EVENT_EVERY == 0:
            self._emit(note)
        for i, emitted_token in enumerate(emitted[:-1]):
            if reason := self.take(turn, emitted_token):
                # The cache keeps what a plain loop would have decoded by now: the
                # pending token and the drafts before this one (positions up to base+i).
                self.cache.rewind(base + 1 + i)
                return reason, emitted_token
        return None, emitted[-1]

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
        base = self.cache.used
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
        self.cache.rewind(base + len(emitted))
        return emitted

    # -- tokens out ---------------------------------------------------------------

    def take(self, turn: Turn, token: int) -> FinishReason | None:
        """Emit one sampled token; the reason to stop if the reply ends with it."""
        reason = self.admit(turn, token)
        if reason != "stop":
            self.publish(turn, token)
        return reason

    def admit(self, turn: Turn, token: int) -> FinishReason | None:
        """Count one sampled token into the reply; the reason to stop if the reply ends
        with it ("stop": an end of turn, not part of the reply; "length": the last)."""
        stats, req = turn.stats, turn.req
        now = time.perf_counter()
        if not stats.first_token_at:
            stats.first_token_at = now
        stats.last_token_at = now
        stats.sampled += 1
        if self.lm.ends_turn(token) and (not req.ignore_eos or req.constraint is not None):
            return "stop"  # a grammar's end ends the reply even when EOS is ignored
        turn.tokens.append(token)
        stats.completion_tokens = len(turn.tokens)
        return "length" if stats.completion_tokens >= req.sampling.max_tokens else None

    def publish(self, turn: Turn, token: int) -> None:
        """The events for an admitted token: its text, and progress every few tokens."""
        stats, n = turn.stats, turn.stats.completion_tokens
        self._emit(TokenChunk(text=turn.utf8.decode(self.lm.token_piece(token)),
                              token_ids=[token]))
        if n % PROGRESS_EVERY == 0:
            span = stats.last_token_at - stats.first_token_at
            self._emit(Progress(completion_tokens=n,
                                tokens_per_s=(stats.sampled - 1) / span if span else 0.0))
            self._emit(self.cache.usage(min(turn.req.sampling.max_tokens - n,
                                            self.lm.n_ctx - self.cache.used)))


def _drop(event: Event) -> None:
    """The emitter between turns: nothing listens."""
