"""The batch's token loop: every step one ``llama_decode`` over all active replies.

Runs on the engine thread only, like every llama.cpp call. A step carries each
decoding reply's *pending* token (sampled and emitted, not yet in the cache) at its
sequence's next position, then prompt tokens of replies still being read: at most
``chunk``, and while replies decode only what keeps the step within a few plain steps
(``pace.py``); a prompt's last token asks for logits, its reply's first token comes
from them.
Replies join (``add``) and leave (``Done``, ``cancel``) between steps, as llama.cpp's
server does with its slots.

    admit    queued groups that fit take sequences and cells (placement.py)
    fill     the batch: pending tokens (each followed by its reply's drafts, when it
             speculates: speculate.py), then prompt chunks
    decode   one llama_decode
    sample   plain greedy rows by one argmax over their logits, the others each with
             its reply's own chain (drafts verified row by row); a finished prompt's
             cells shared
    release  finished replies free their share (the last keeps its cells, idle)
"""

from __future__ import annotations

import contextlib
import time

import llama_cpp
from llama_cpp import _internals

from engine.batch.admission import Admission, reply_budget
from engine.batch.pace import PromptPace, prompt_budget, streaming_before
from engine.batch.placement import Placement
from engine.batch.samplers import Grammar, greedy_tokens, sampler_for, seeded
from engine.batch.saved import saved_seqs
from engine.batch.slots import BatchStats, Group, ReplyTiming, Slot
from engine.batch.speculate import begin, draft, plain, report, verify
from engine.batch.window import evict, generation_span
from engine.cache.pool import StateCache
from engine.config import KVCacheConfig, SamplingConfig, SpeculativeConfig
from engine.decode.turn_state import TurnStats, done_event
from engine.errors import DecodeError, KvchatError
from engine.events import Error, Event, FinishReason, KVUsage, Progress, PromptEvaluated, TokenChunk
from engine.model.loader import LoadedModel

PROGRESS_EVERY = 16
"""Tokens between progress events of one reply."""
SINK_TOKENS = 4
"""Cells at the start never evicted when ``add`` is not told how many to keep."""


class BatchDecoder(Placement):
    """``n_seq`` replies at a time in ``lm``'s context (loaded with ``parallel`` >=
    ``n_seq``). ``chunk``: prompt tokens evaluated per step, interleaved with the
    others' decoding; ``window``: cells one reply may hold (default: the context);
    ``max_queue``: replies that may wait for room; ``states``: the state cache that
    idle sequences are saved to and prompts restored from (saved.py), keyed with
    ``policy``'s window, None for none; ``speculative``: each reply's
    prompt-lookup speculation (speculate.py), None for none."""

    def __init__(self, lm: LoadedModel, n_seq: int, *, chunk: int = 256,
                 window: int | None = None, max_queue: int = 64,
                 discard_fraction: float = 0.25, states: StateCache | None = None,
                 policy: KVCacheConfig | None = None,
                 speculative: SpeculativeConfig | None = None) -> None:
        loaded = lm.ctx.params.n_seq_max
        if n_seq > loaded:
            raise KvchatError(f"{n_seq} sequences at once need the model loaded with "
                              f"--parallel {n_seq} (it was loaded with {loaded})")
        self.lm, self.n_seq = lm, n_seq
        self.chunk = max(1, min(chunk, lm.n_batch - n_seq))
        # Split streams: a reply's cells are its sequence's own stream of n_ctx / n_seq.
        per_seq = llama_cpp.llama_n_ctx_seq(lm.ctx.ctx)
        self.window = min(window or per_seq, per_seq)
        self.discard_fraction = discard_fraction
        self.saved = saved_seqs(lm, n_seq, states, policy)
        self.speculative = speculative
        self.ledger = Admission(lm.n_ctx, n_seq, max_queue)
        self.slots: dict[int, Slot] = {}
        """Replies not finished yet, queued ones included, by id."""
        self.stats = BatchStats()
        self.pace = PromptPace()
        self.batch = _internals.LlamaBatch(n_tokens=lm.n_batch, embd=0, n_seq_max=1)
        self._events: list[Event] = []
        self._inflight: tuple[list[Slot], int, float] | None = None
        """A launched step: its decoding slots, prompt tokens and start."""
        self._next_id = 0
        self.clear()  # the cells admission counts as free must be

    def clear(self) -> None:
        """Empty every sequence this decoder uses."""
        for seq in range(self.n_seq):
            self.lm.ctx.kv_cache_seq_rm(seq, -1, -1)

    @property
    def busy(self) -> bool:
        """Anything active or queued."""
        return bool(self.ledger.active or self.ledger.waiting)

    def queued(self) -> dict[int, int]:
        """Each waiting reply's position (1: the next to start), by reply id."""
        out, ahead = {}, 0
        for group in self.ledger.waiting:
            out |= {slot.reply: ahead + 1 for slot in group.members}
            ahead += len(group.members)
        return out

    def take_events(self) -> list[Event]:
        """Events since the last step (a reply queued by ``add``, a cancel's ``Done``)
        without stepping."""
        events, self._events = self._events, []
        return events

    def close(self) -> None:
        for slot in list(self.slots.values()):
            slot.sampler.close()
        self.slots.clear()
        self.save_idle()
        self.clear()
        self.batch.close()

    # -- joining and leaving --------------------------------------------------------

    def add(self, prompt: list[int], sampling: SamplingConfig, *, n: int = 1,
            ignore_eos: bool = False, grammar: Grammar | None = None,
            n_keep: int | None = None) -> list[int]:
        """Queue ``n`` replies to ``prompt`` (evaluated once) and return their ids;
        they start at once if they fit. ``n_keep``: prompt tokens a sliding window
        never evicts (the system prompt; default a few sink tokens). Raises
        KvchatError for what could never run or a full queue, ConstraintError for a
        grammar that cannot be built."""
        if not prompt or n < 1:
            raise KvchatError("a reply needs a prompt of at least one token")
        keep = min(SINK_TOKENS if n_keep is None else n_keep, len(prompt) - 1)
        group = Group(prompt=list(prompt), logical=list(prompt), n_keep=max(0, keep))
        budget, gen = reply_budget(self.window, len(prompt), sampling.max_tokens, n)
        group.room, group.reserved = budget - gen, budget - gen + n * gen
        group.members = [Slot(reply=-1, group=group, sampler=None, max_tokens=0,  # type: ignore[arg-type]
                              ignore_eos=ignore_eos, constrained=grammar is not None,
                              stats=TurnStats(started=0.0)) for _ in range(n)]
        self.ledger.check(group)
        started = time.perf_counter()
        made: list[Slot] = []
        try:
            for k, slot in enumerate(group.members):
                slot.sampler = sampler_for(self.lm, seeded(sampling, k),
                                           ignore_eos=ignore_eos, grammar=grammar)
                made.append(slot)
        except KvchatError:
            for slot in made:
                slot.sampler.close()
            raise
        for slot in group.members:
            slot.reply, self._next_id = self._next_id, self._next_id + 1
            slot.max_tokens, slot.budget = sampling.max_tokens, budget
            slot.spec = begin(self.speculative, self.lm, sampling, group.logical)
            slot.stats.started = started
            self.slots[slot.reply] = slot
        self.ledger.waiting.append(group)
        self.admit()
        return [slot.reply for slot in group.members]

    def cancel(self, reply: int) -> None:
        """Stop one reply now and free its sequence's cells; the others go on. Its
        ``Done`` (cancelled) comes with the next step's events."""
        slot = self.slots.get(reply)
        if slot is None:
            return
        group = slot.group
        if group.phase == "prefill" and slot is group.leader and len(group.members) > 1:
            self.hand_over(group)  # the prompt's cells go on with the next answer
        self.finish(slot, "cancelled", keep=False)

    # -- one step -------------------------------------------------------------------

    def step(self) -> list[Event]:
        """One decode over every active reply, then one sample per row; the events of
        the step (and of anything that happened since the last one)."""
        self.launch()
        return self.collect()

    def launch(self) -> None:
        """Admit, fill the batch and start its decode. On a GPU ``llama_decode``
        returns before its graph has run: what the caller does before ``collect``
        (handing the last step's tokens over) overlaps the device's work."""
        self.admit()
        decoding, prompts = self.fill()
        if self.batch.n_tokens():
            self._inflight = (decoding, prompts, time.perf_counter())
            self.decode(prompts)

    def collect(self) -> list[Event]:
        """Sample the launched step's rows (reading the logits waits for the decode);
        the events since the last ``collect``."""
        if self._inflight is not None:
            decoding, prompts, started = self._inflight
            self._inflight = None
            self.sample(decoding)
            # Timed from the launch up to the sampled tokens, as a stream waits.
            elapsed = time.perf_counter() - started
            self.pace.observe(elapsed, len(decoding), prompts)
            for slot in decoding:
                if slot.spec is not None:
                    slot.spec.timed(None if prompts else elapsed)
            self.admit()  # room freed by replies that ended goes to the queue at once
        events, self._events = self._events, []
        return events

    def fill(self) -> tuple[list[Slot], int]:
        """Put the step's tokens into the batch: each decoding reply's pending token at
        position ``len(cells)`` of its sequence and its drafts after it, then prompt
        tokens (``prompt_budget`` of them) at positions ``evaluated..`` of their
        leader's sequence. Returns the decoding slots and how many prompt tokens went
        in."""
        self.batch.reset()
        decoding = []
        for group in list(self.ledger.active):
            for slot in [s for s in group.members if s.pending is not None]:
                if len(slot.cells) >= slot.budget and not self.slide(slot):
                    self.finish(slot, "context_full")
                    continue
                decoding.append(slot)
        budget = prompt_budget(self.pace, streaming_before(decoding, self.ledger.active),
                               self.chunk)
        reading = sum(len(g.prompt) - g.evaluated for g in self.ledger.active
                      if g.phase == "prefill")
        # Drafts get the rows the prompts leave: on a batch-invariant load, only as many
        # as keep every row equal to a one-token decode.
        draft(decoding, (self.lm.invariant_rows or self.lm.n_batch) - len(decoding)
              - min(budget, reading))
        for slot in decoding:
            assert slot.pending is not None
            slot.row = self.put(slot.pending, len(slot.cells), slot.seq, True)
            slot.cells.append(slot.pending)
            slot.pending = None
            for token in slot.drafts:
                self.put(token, len(slot.cells), slot.seq, True)
                slot.cells.append(token)
        room, prompts = min(budget, self.lm.n_batch - self.batch.n_tokens()), 0
        for group in self.ledger.active:
            if group.phase != "prefill" or room <= 0:
                continue
            leader, start = group.leader, group.evaluated
            take = group.prompt[start:start + room]
            for i, token in enumerate(take):
                last = start + i == len(group.prompt) - 1  # logits for the first sample
                row = self.put(token, start + i, leader.seq, last)
            leader.row = row if start + len(take) == len(group.prompt) else -1
            leader.cells.extend(take)
            group.evaluated += len(take)
            room -= len(take)
            prompts += len(take)
        return decoding, prompts

    def put(self, token: int, pos: int, seq: int, logits: bool) -> int:
        """Append one token to the batch; its row."""
        b, j = self.batch.batch, self.batch.batch.n_tokens
        b.token[j], b.pos[j], b.n_seq_id[j], b.logits[j] = token, pos, 1, logits
        b.seq_id[j][0] = seq
        b.n_tokens = j + 1
        return j

    def decode(self, prompts: int) -> None:
        n = self.batch.n_tokens()
        threads = self.lm.prompt_threads() if prompts else contextlib.nullcontext()
        started = time.perf_counter()
        try:
            with threads:
                self.lm.ctx.decode(self.batch)
        except RuntimeError as exc:
            raise DecodeError(f"llama.cpp could not evaluate a batch of {n} tokens "
                              f"({prompts} of prompts): {exc}") from None
        elapsed = time.perf_counter() - started
        st = self.stats
        st.steps += 1
        st.rows_decoded += n - prompts
        st.prompt_tokens_evaluated += prompts
        st.decode_s += elapsed
        st.max_rows = max(st.max_rows, n)
        for group in self.ledger.active:
            for slot in group.members:
                if slot.stats.first_token_at and slot.row >= 0:
                    slot.stats.decode_s += elapsed
                if slot.eviction is not None:  # this decode applied its shift
                    self.emit(slot, slot.eviction.model_copy(update={
                        "shift_s": elapsed, "shift_tokens": 1}))
                    slot.eviction = None

    def sample(self, decoding: list[Slot]) -> None:
        """Draw each row's token with its reply's chain; a prompt read to its end is
        shared with its group's other sequences, each of which draws from its row."""
        greedy = greedy_tokens(self.lm, decoding)
        for slot in decoding:
            if slot.drafts:
                verify(self, slot)
                continue
            token = greedy.get(slot.reply)
            if slot.spec is not None:
                plain(self, slot)
            self.take(slot, slot.sampler.sample(self.lm.ctx, slot.row)
                      if token is None else token)
        for group in list(self.ledger.active):
            if group.phase != "prefill" or group.evaluated < len(group.prompt):
                continue
            self.share(group)
            for slot in list(group.members):
                self.take(slot, slot.sampler.sample(self.lm.ctx, group.leader.row))

    def share(self, group: Group) -> None:
        """The prompt is in the leader's cells: the other answers' sequences get the
        same cells (no copy in a unified cache: the cells gain their sequence ids; split
        streams copy the leader's stream inside the next decode)."""
        leader, now = group.leader, time.perf_counter()
        group.phase = "decode"
        for slot in group.members:
            if slot is not leader:
                self.lm.ctx.kv_cache_seq_cp(leader.seq, slot.seq, -1, -1)
                slot.cells = list(leader.cells)
            # The leader's sequence evaluated the prompt; the others' got its cells.
            st, evaluated = slot.stats, len(group.prompt) - group.reused
            st.prompt_tokens, st.prefill_s = len(group.prompt), now - st.started
            st.evaluated_tokens = evaluated if slot is leader else 0
            st.reused_tokens = len(group.prompt) - st.evaluated_tokens
            self.emit(slot, PromptEvaluated(
                prompt_tokens=st.prompt_tokens, reused_tokens=st.reused_tokens,
                evaluated_tokens=st.evaluated_tokens, prefill_s=st.prefill_s,
                restored_tokens=min(group.restored, st.reused_tokens)))
            self.emit(slot, self.usage(slot))

    def take(self, slot: Slot, token: int) -> None:
        """Count one sampled token into the reply and emit it, or end the reply."""
        st, now = slot.stats, time.perf_counter()
        st.first_token_at = st.first_token_at or now
        st.last_token_at = now
        st.sampled += 1
        if self.ends(slot, token):
            self.finish(slot, "stop")
            return
        slot.tokens.append(token)
        if slot.spec is not None:
            slot.spec.drafter.extend([token])
        st.completion_tokens = n = len(slot.tokens)
        self._events.append(TokenChunk(  # built with its reply: no copy per token
            text=slot.utf8.decode(self.lm.token_piece(token)), token_ids=[token],
            reply=slot.reply))
        if n % PROGRESS_EVERY == 0:
            span = st.last_token_at - st.first_token_at
            self.emit(slot, Progress(completion_tokens=n,
                                     tokens_per_s=(st.sampled - 1) / span if span else 0.0))
        if n >= slot.max_tokens:
            self.finish(slot, "length")
        else:
            slot.pending = token

    def ends(self, slot: Slot, token: int) -> bool:
        """Whether ``token`` ends ``slot``'s reply as a stop (not part of it); a
        grammar's end ends it even when EOS is ignored."""
        return self.lm.ends_turn(token) and (not slot.ignore_eos or slot.constrained)

    def slide(self, slot: Slot) -> bool:
        """Make room for one more cell in ``slot``'s own window; False when it cannot
        (cells shared with another answer never move, or too few may go)."""
        group = slot.group
        span = None if slot.shared else generation_span(
            slot.cells, group.n_keep, 1, self.discard_fraction, self.lm.ends_turn)
        if span is None:
            return False
        slot.dropped += span.size
        slot.stats.evictions += 1
        slot.stats.evicted_tokens += span.size
        self.stats.evictions += 1
        slot.eviction = evict(self.lm.ctx, slot.seq, slot.cells, span, "generation",
                              kept=group.n_keep, evicted_total=slot.dropped)
        return True

    # -- leaving --------------------------------------------------------------------

    def finish(self, slot: Slot, reason: FinishReason, *, keep: bool = True) -> None:
        """End ``slot``'s reply with its ``Done``; its sequence is freed, or kept idle
        as its conversation's prefix when it is the last of its group."""
        text = b"".join(map(self.lm.token_piece, slot.tokens)).decode("utf-8", "replace")
        st = slot.stats
        if slot.spec is not None and slot.spec.rounds:
            self.emit(slot, report(self, slot))
        self.emit(slot, done_event(st, reason, text))
        span = st.last_token_at - st.first_token_at
        self.stats.replies[slot.reply] = ReplyTiming(
            first_token_s=(st.first_token_at - st.started) if st.first_token_at else 0.0,
            tokens_per_s=max(0, st.sampled - 1) / span if span > 0 else 0.0,
            completion_tokens=st.completion_tokens)
        self.release(slot, keep=keep and reason != "cancelled")

    def emit(self, slot: Slot, event: Event) -> None:
        self._events.append(event.model_copy(update={"reply": slot.reply}))

    def usage(self, slot: Slot) -> KVUsage:
        used, per = len(slot.cells), self.lm.bytes_per_cell
        cells = self.lm.n_ctx if self.lm.ctx.params.kv_unified else self.window
        return KVUsage(used_cells=used, reserved_cells=max(0, slot.budget - used),
                       n_ctx=cells, bytes_per_cell=per, used_bytes=used * per,
                       total_bytes=cells * per, kept_cells=slot.group.n_keep,
                       evicted_total=slot.dropped)

    def fail(self, exc: KvchatError) -> list[Event]:
        """After a failed decode: every reply ends with the error and the cache is
        emptied, so the next reply starts from a known state."""
        for slot in list(self.slots.values()):
            self.emit(slot, Error(code=exc.code, message=exc.message))
            slot.sampler.close()
        self.slots.clear()
        self._inflight = None
        self.ledger = Admission(self.lm.n_ctx, self.n_seq, self.ledger.max_queue)
        self.clear()
        events, self._events = self._events, []
        return events

