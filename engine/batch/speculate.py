"""Speculation per reply of the batch: each reply drafts by prompt lookup over its own
conversation, and verifies its drafts in the step's one ``llama_decode``.

    begin    a reply's own controller and drafter, or None where it does not speculate
    draft    each decoding reply's drafts for a step, within the rows the step has left
    verify   after the decode: sample a speculating reply row by row with its own
             sampler, keep the drafts it agrees with, drop the others' cells, emit
    plain    a plain step of a speculating reply (the pause before probing again)
    report   the reply's ``SpecStats``

In the batch a reply's pending token and its k drafts are consecutive rows of its
sequence (positions ``len(cells)..``, each with logits). Row i's own draw is kept only
while it equals draft i, so the reply has its sampler's distribution, and greedy
replies are their plain output wherever the step stays batch-invariant: ``draft`` keeps
the step's rows within ``lm.invariant_rows`` on such a load. Rejected drafts leave the
sequence (``seq_rm``), so ``slot.cells`` holds what a plain loop would. A reply drafts
only what fits its budget before its window would have to slide, and no more than its
``max_tokens`` can still take.

The draft length follows the reply's acceptance, as ``engine.decode.speculation``
shapes it: short at first, longer while every draft lands, cut back to what does. After
``MISSES_TO_PAUSE`` rounds in a row that land nothing the reply stops drafting for a
while (twice as long each time), then probes again. Unlike the single-sequence path
there is no switch on measured speed: a step's time is shared by every reply in it, so
one reply's speedup is not its own to measure; the ``SpecStats`` times are what the
reply's steps took from launch to sampled tokens (steps that also read a prompt left
out), per token they gave it, against its own plain steps or, before it has had any,
the batch's.

Modes: ``off`` and no config disable it; ``prompt-lookup`` always speculates; ``auto``
stands aside for greedy replies on a load that is not batch-invariant (as on the
single-sequence path: batched rows could change their output); ``draft`` speculates
here by prompt lookup. A draft *model* stays on the single-sequence path: in the batch
it would need a context of its own holding a sequence per reply, evaluated in step with
the batch, and its own decodes would stall every reply of the step.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import median
from typing import TYPE_CHECKING

from engine.config import SamplingConfig, SpeculativeConfig
from engine.decode.drafting import PromptLookup
from engine.events import SpecStats
from engine.model.loader import LoadedModel

if TYPE_CHECKING:
    from engine.batch.decoder import BatchDecoder
    from engine.batch.slots import Slot

START_DRAFT = 2
"""Drafts of a reply's first round, and of each probe after a pause."""
GROW_BY = 2
"""Longer drafts after a round whose every draft landed."""
MISSES_TO_PAUSE = 3
"""Rounds in a row that land nothing before the reply stops drafting for a while."""
PAUSE_TOKENS = 16
"""Plain tokens of the first pause; each further pause in the reply doubles it."""
MAX_PAUSE_TOKENS = 256
SPEC_EVENT_EVERY = 8
"""Rounds between a reply's spec events (a pause or a probe is sent at once)."""
RECENT = 8
"""Recent steps of each kind the times are taken over."""


@dataclass
class SlotSpec:
    """One reply's speculation: its drafter over its conversation and how far it drafts."""

    drafter: PromptLookup
    max_draft: int
    adaptive: bool = True
    draft_len: int = 0
    active: bool = True
    """False while paused after repeated misses."""
    misses: int = 0
    """Rounds in a row that landed nothing."""
    pauses: int = 0
    wait: int = 0
    """Plain tokens left before the next probe, while paused."""
    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    last: tuple[str, int] | None = None
    """The step just sampled, until it is timed: a round and the tokens it emitted, or
    a plain token."""
    plain_times: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT))
    recent: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=RECENT))
    """(seconds, tokens emitted) of recent rounds."""

    def __post_init__(self) -> None:
        self.draft_len = self.draft_len or min(START_DRAFT, self.max_draft)

    def after_round(self, drafted: int, accepted: int) -> str:
        """Shape the draft length; the reason when the reply pauses."""
        self.rounds += 1
        self.drafted += drafted
        self.accepted += accepted
        self.last = ("round", accepted + 1)
        if accepted == drafted:
            self.draft_len = min(self.max_draft, self.draft_len + GROW_BY)
        else:
            self.draft_len = max(1, min(self.draft_len - 1, accepted + 1))
        self.misses = 0 if accepted else self.misses + 1
        if not self.adaptive or self.misses < MISSES_TO_PAUSE:
            return ""
        self.active, self.misses = False, 0
        self.wait = min(MAX_PAUSE_TOKENS, PAUSE_TOKENS << self.pauses)
        self.pauses += 1
        return (f"no draft landed in {MISSES_TO_PAUSE} rounds: plain decoding for "
                f"{self.wait} tokens")

    def after_plain(self) -> str:
        """Count a plain step; the reason when the pause ends and drafting resumes."""
        self.last = ("plain", 1)
        if self.active:
            return ""
        self.wait -= 1
        if self.wait > 0:
            return ""
        self.active, self.draft_len = True, min(START_DRAFT, self.max_draft)
        return "probing again after a pause"

    def timed(self, seconds: float | None) -> None:
        """The step just sampled took ``seconds`` from its launch to its tokens; None
        when it also read prompt tokens, which would charge a prompt to the reply."""
        kind, tokens = self.last or ("", 0)
        self.last = None
        if seconds is None or not kind:
            return
        if kind == "plain":
            self.plain_times.append(seconds)
        else:
            self.recent.append((seconds, tokens))

    def stats(self, running: float, reason: str = "", plain_step_s: float = 0.0
              ) -> SpecStats:
        """``plain_step_s``: the batch's plain step, for a reply that has had none of
        its own (it drafted from its first token)."""
        plain = median(self.plain_times) if self.plain_times else plain_step_s
        tokens = sum(n for _, n in self.recent)
        per_token = sum(s for s, _ in self.recent) / tokens if tokens else 0.0
        return SpecStats(
            drafter="prompt-lookup", active=self.active, reason=reason, rounds=self.rounds,
            drafted=self.drafted, accepted=self.accepted,
            acceptance=self.accepted / self.drafted if self.drafted else 0.0,
            running_acceptance=running, draft_len=self.draft_len,
            plain_s_per_token=plain, spec_s_per_token=per_token,
            speedup=plain / per_token if per_token else 0.0)


def begin(config: SpeculativeConfig | None, lm: LoadedModel, sampling: SamplingConfig,
          history: Sequence[int]) -> SlotSpec | None:
    """The controller of a reply to ``history`` (its conversation's tokens), or None
    where it does not speculate."""
    if config is None or config.mode == "off":
        return None
    if config.mode == "auto" and sampling.temperature <= 0 and not lm.invariant_rows:
        return None
    rows = lm.invariant_rows
    max_draft = min(config.max_draft, rows - 1) if rows else config.max_draft
    if max_draft < 1:
        return None
    drafter = PromptLookup(config.min_ngram, config.max_ngram)
    drafter.begin(history)
    return SlotSpec(drafter, max_draft, adaptive=config.adaptive)


def draft(decoding: list[Slot], rows: int) -> None:
    """Set each decoding reply's ``drafts`` for this step, ``rows`` at most in all (what
    the step has left beside the pending tokens and the prompts), first come first
    served. A reply drafts within its budget, so its pending token and drafts never
    need its window to slide, and no more than its ``max_tokens`` can still take."""
    for slot in decoding:
        slot.drafts = []
        spec = slot.spec
        if spec is None or not spec.active or rows <= 0 or slot.pending is None:
            continue
        n = min(spec.draft_len, rows, slot.budget - len(slot.cells) - 1,
                slot.max_tokens - len(slot.tokens) - 1)
        if n > 0:
            slot.drafts = spec.drafter.draft(slot.cells, slot.pending, n)
            rows -= len(slot.drafts)


def verify(dec: BatchDecoder, slot: Slot) -> None:
    """After the decode: draw ``slot``'s rows in order with its own sampler while each
    draw equals the draft before it, drop the rejected drafts' cells, and emit the
    accepted drafts and the reply's own token (the new pending one)."""
    spec, drafts = slot.spec, slot.drafts
    assert spec is not None
    slot.drafts = []
    base = len(slot.cells) - len(drafts) - 1  # the pending token's position
    emitted: list[int] = []
    for i in range(len(drafts) + 1):
        token = slot.sampler.sample(dec.lm.ctx, slot.row + i)  # also feeds its chain
        emitted.append(token)
        if i == len(drafts) or token != drafts[i]:
            break
    accepted = len(emitted) - 1
    trim(dec, slot, base + len(emitted))  # the pending token and the accepted drafts
    slot.stats.drafted += len(drafts)
    slot.stats.accepted += accepted
    dec.stats.drafted += len(drafts)
    dec.stats.accepted += accepted
    reason = spec.after_round(len(drafts), accepted)
    if reason or spec.rounds % SPEC_EVENT_EVERY == 0:
        dec.emit(slot, report(dec, slot, reason))
    for i, token in enumerate(emitted):
        if i < accepted and (dec.ends(slot, token) or len(slot.tokens) + 1 >= slot.max_tokens):
            # The reply ends inside the round: its cells keep what a plain loop would
            # have decoded by now, up to the draft before this one.
            trim(dec, slot, base + 1 + i)
        slot.pending = None
        dec.take(slot, token)
        if slot.pending is None:  # it ended
            return


def plain(dec: BatchDecoder, slot: Slot) -> None:
    """A speculating reply decoded its pending token alone."""
    assert slot.spec is not None
    if reason := slot.spec.after_plain():
        dec.emit(slot, report(dec, slot, reason))


def trim(dec: BatchDecoder, slot: Slot, length: int) -> None:
    """Drop ``slot``'s cells from position ``length`` on."""
    if length < len(slot.cells):
        dec.lm.ctx.kv_cache_seq_rm(slot.seq, length, -1)
        del slot.cells[length:]


def report(dec: BatchDecoder, slot: Slot, reason: str = "") -> SpecStats:
    """``slot``'s speculation so far, with the acceptance over every reply of the decoder."""
    assert slot.spec is not None
    st = dec.stats
    return slot.spec.stats(st.accepted / st.drafted if st.drafted else 0.0, reason,
                           dec.pace.plain_step_s)
