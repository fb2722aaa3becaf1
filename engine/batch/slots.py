"""The state of the batch: one :class:`Slot` per reply, one :class:`Group` per prompt
(the N answers of one prompt share it), and the counters the decoder measures."""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from engine.decode.sampling.choice import Sampler
from engine.decode.turn_state import TurnStats
from engine.events import Eviction

if TYPE_CHECKING:
    from engine.batch.speculate import SlotSpec

Phase = Literal["waiting", "prefill", "decode", "idle"]


@dataclass
class Slot:
    """One reply on one llama.cpp sequence."""

    reply: int
    """The reply's id: what ``add`` returned and every event of it carries."""
    group: Group
    sampler: Sampler
    max_tokens: int
    ignore_eos: bool
    constrained: bool
    stats: TurnStats
    seq: int = -1
    """Its llama.cpp sequence, once admitted."""
    cells: list[int] = field(default_factory=list)
    """Tokens its sequence holds, by position: ``cells[i]`` is at position ``i``."""
    budget: int = 0
    """Cells it may hold at most (prompt + max_tokens, within the window); past it the
    window slides."""
    pending: int | None = None
    """Sampled and emitted, not yet in the cache: the next step decodes it at position
    ``len(cells)``."""
    tokens: list[int] = field(default_factory=list)
    """The reply so far (an end of turn is not part of it)."""
    utf8: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace"))
    row: int = -1
    """This step's batch row whose logits it samples; -1 when it has none."""
    eviction: Eviction | None = None
    """An eviction whose event waits for the decode that applies its shift."""
    last_used: int = 0
    """Step at which it last decoded: the least recently used idle slot goes first."""
    logical: list[int] = field(default_factory=list)
    """Idle: its conversation's tokens (prompt and reply) before any eviction."""
    dropped: int = 0
    """Tokens of its conversation evicted after the kept prefix: its cells hold
    ``window(logical, group.n_keep, dropped)``."""
    spec: SlotSpec | None = None
    """Its speculation (speculate.py), None when it does not speculate."""
    drafts: list[int] = field(default_factory=list)
    """This step's drafts: rows ``row + 1..`` after its pending token's, at the
    positions after it; verified and cleared when the step samples."""

    @property
    def shared(self) -> bool:
        """Whether other live sequences share its prompt's cells."""
        return len(self.group.members) > 1


@dataclass
class Group:
    """A prompt and the replies that answer it: its cells are evaluated once, on the
    leader's sequence, then shared with the others (``seq_cp``)."""

    prompt: list[int]
    """The window of the prompt the cells will hold (after any prompt eviction)."""
    members: list[Slot] = field(default_factory=list)
    n_keep: int = 0
    """Positions ``[0, n_keep)`` are never evicted."""
    dropped: int = 0
    """Prompt tokens evicted after the kept prefix before evaluation."""
    logical: list[int] = field(default_factory=list)
    """The prompt as given, nothing evicted."""
    evaluated: int = 0
    """Prompt positions the leader's sequence holds so far."""
    reused: int = 0
    """Of those, the ones found in an idle sequence's cells or a saved state (not
    evaluated)."""
    restored: int = 0
    """Of ``reused``, the ones restored from a saved state (saved.py)."""
    phase: Phase = "waiting"
    room: int = 0
    """Cells its prompt may take: what the window leaves after the reply's share."""
    reserved: int = 0
    """Cells admission counts for it: the prompt once, and each reply's share."""
    queued_at: int = 0
    """Its position when it last reported one (0: never queued)."""

    @property
    def leader(self) -> Slot:
        return self.members[0]


@dataclass
class ReplyTiming:
    """A reply's speed as the engine measured it."""

    first_token_s: float
    """From ``add`` to its first sampled token."""
    tokens_per_s: float
    """Decode rate: tokens after the first over the time they took."""
    completion_tokens: int


@dataclass
class BatchStats:
    """Counters of one decoder, measured inside the engine."""

    steps: int = 0
    """``llama_decode`` calls."""
    rows_decoded: int = 0
    """Rows of decoding replies: their pending tokens and drafts."""
    prompt_tokens_evaluated: int = 0
    """Prompt tokens evaluated; N answers of one prompt count it once."""
    prompt_tokens_reused: int = 0
    """Prompt tokens found in an idle sequence's cells instead."""
    decode_s: float = 0.0
    """Seconds inside ``llama_decode``."""
    max_rows: int = 0
    """Most tokens one step carried."""
    evictions: int = 0
    drafted: int = 0
    """Tokens drafted by speculating replies."""
    accepted: int = 0
    """Of those, the ones their reply's sampler agreed with."""
    replies: dict[int, ReplyTiming] = field(default_factory=dict)
    """Each finished reply's timing, by reply id."""
