"""When to speculate, how far, and whether it is paying: measured, not hoped for.

The controller keeps what one plain decode step typically costs and what a verification
round of n rows (pending token plus drafts, drafting included) typically costs. The
speedup of recent rounds is the plain cost of the tokens they emitted over their typical
cost. Typical means the median of recent measurements: one step that the OS or a busy
neighbour slowed five-fold must not switch speculation off for the rest of the reply,
and one lucky first step must not keep it on.

The draft length follows the acceptance rate; when the speedup stays below 1 the
controller switches speculation off for the rest of the reply, and keeps checking, for
free, whether its drafter *would* have been right (shadow drafts). When the text turns
repetitive again, it switches back on.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from statistics import median

from engine.config import ModelConfig, SpeculativeConfig
from engine.decode.drafting import Drafter, DraftModel, PromptLookup, check_same_vocab
from engine.errors import ConfigError, ModelLoadError
from engine.events import SpecStats
from engine.model.loader import LoadedModel, load_model

ROUNDS_TO_JUDGE = 4
"""Recent rounds needed before the speedup is trusted enough to switch off."""
RECENT_ROUNDS = 8
SHADOW_WINDOW = 16
SHADOW_HITS_TO_RESUME = 12
"""Of the last SHADOW_WINDOW plain steps, how many shadow drafts must have guessed the
next token before speculation resumes."""
COOLDOWN_TOKENS = 32
"""Plain tokens after a switch-off before shadow drafts may switch it back on; doubled
at each further switch-off in the same reply, so text that looks repetitive but does
not pay (near-ties, short matches) cannot make it flap."""
DRAFT_MODEL_RETRY_AFTER = 64
"""A draft model's shadow drafts cost a decode each, so once off it only retries
after this many plain tokens."""
PLAIN_SAMPLES = 3
"""Plain steps measured before the first draft: a median of one is no yardstick."""
COST_WINDOW = 9
"""Measurements per step shape (plain, or a round of n rows) the medians are taken over."""
YARDSTICK_EVERY = 16
"""Verification rounds between plain steps taken on purpose while speculation is on, so
the yardstick follows the cache as it grows (attention costs more as it fills)."""


@dataclass
class SpecController:
    drafter: Drafter
    config: SpeculativeConfig
    max_draft: int = 0
    """Longest draft: config.max_draft, less where the target's batch invariance holds
    only for shorter batches; 0 means config.max_draft."""
    even_rows: bool = False
    """Keep verification batches (pending token + drafts) to an even number of rows.
    llama.cpp's CPU matmul for Q8_0/Q5_0 weights (llamafile's tinyBLAS) works on pairs
    of columns and gives an odd one a pass of its own over the weights: on the bundled
    model's 262k x 640 output layer, 3 rows took 39 ms and 4 rows 31 ms, 7 rows 54 ms
    and 8 rows 41 ms (2-core CPU)."""
    draft_len: int = 0
    active: bool = True
    plain_times: deque[float] = field(default_factory=lambda: deque(maxlen=COST_WINDOW))
    """Seconds of recent plain decode steps, kept across replies."""
    round_times: dict[int, deque[float]] = field(default_factory=dict)
    """Seconds of recent verification rounds by their row count, kept across replies."""
    total_drafted: int = 0
    total_accepted: int = 0
    # this reply
    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    recent: deque[tuple[int, int]] = field(default_factory=lambda: deque(maxlen=RECENT_ROUNDS))
    """(rows, tokens emitted) of recent verification rounds."""
    shadow: deque[bool] = field(default_factory=lambda: deque(maxlen=SHADOW_WINDOW))
    _shadow_guess: int | None = None
    _off_tokens: int = 0
    _switch_offs: int = 0
    _rounds_since_plain: int = 0

    def __post_init__(self) -> None:
        self.max_draft = self.max_draft or self.config.max_draft
        self.draft_len = max(1, self.max_draft // 2) | (1 if self.even_rows else 0)

    def begin_reply(self, history: list[int]) -> None:
        self.drafter.begin(history)
        self.active = True
        self.rounds = self.drafted = self.accepted = 0
        self.recent.clear()
        self.shadow.clear()
        self._shadow_guess, self._off_tokens, self._switch_offs = None, 0, 0
        self._rounds_since_plain = 0

    @property
    def plain_s(self) -> float | None:
        """What one plain decode step typically costs (seconds); None before the first."""
        return median(self.plain_times) if self.plain_times else None

    def propose(self, cache: list[int], pending: int) -> list[int]:
        """Drafts for the next round, or [] for a plain step."""
        if len(self.plain_times) < PLAIN_SAMPLES:
            return []  # plain steps first: they are the yardstick
        if self.active:
            if self._rounds_since_plain >= YARDSTICK_EVERY:
                self._rounds_since_plain = 0
                return []
            return self.shaped(self.drafter.draft(cache, pending, self.draft_len))
        if self.drafter.name == "prompt-lookup":
            guess = self.drafter.draft(cache, pending, 1)
            self._shadow_guess = guess[0] if guess else None
        elif self._off_tokens >= DRAFT_MODEL_RETRY_AFTER:
            self.active, self._off_tokens = True, 0
            return self.shaped(self.drafter.draft(cache, pending, self.draft_len))
        return []

    def shaped(self, drafts: list[int]) -> list[int]:
        """Drop the last draft where it would make the batch's row count odd."""
        if self.even_rows and len(drafts) % 2 == 0:
            return drafts[:-1]
        return drafts

    def after_plain(self, seconds: float, token: int) -> SpecStats | None:
        """A plain step took ``seconds`` and produced ``token``."""
        self.plain_times.append(seconds)
        self.drafter.extend([token])
        if self.active:
            return None
        self._off_tokens += 1
        if self._shadow_guess is not None or self.drafter.name == "prompt-lookup":
            self.shadow.append(self._shadow_guess == token)
            self._shadow_guess = None
        hits = sum(self.shadow)
        cooldown = COOLDOWN_TOKENS << max(0, self._switch_offs - 1)
        if self.config.adaptive and len(self.shadow) == SHADOW_WINDOW \
                and hits >= SHADOW_HITS_TO_RESUME and self._off_tokens >= cooldown:
            self.active = True
            self.recent.clear()
            self.shadow.clear()
            return self.stats(f"the text repeats again: {hits} of the last {SHADOW_WINDOW} "
                              "tokens were predictable")
        return None

    def after_round(self, seconds: float, drafted: int, accepted: int,
                    emitted: list[int]) -> SpecStats:
        """A verification round of ``drafted`` tokens, ``accepted`` of them right, emitted
        ``emitted`` (the accepted drafts, then usually the model's own next token)."""
        self.rounds += 1
        self.drafted += drafted
        self.accepted += accepted
        self.total_drafted += drafted
        self.total_accepted += accepted
        rows = drafted + 1
        self.round_times.setdefault(rows, deque(maxlen=COST_WINDOW)).append(seconds)
        self.recent.append((rows, len(emitted)))
        self._rounds_since_plain += 1
        self.drafter.extend(emitted)
        # Grow the draft while every token lands; shrink it towards what does.
        if accepted == drafted:
            self.draft_len = min(self.max_draft, self.draft_len + 2)
        else:
            self.draft_len = max(1, min(self.draft_len - 1, accepted + 2))
        if self.even_rows and self.draft_len % 2 == 0:
            # an odd draft makes an even batch; when the longest allowed is even, round down
            self.draft_len += 1 if self.draft_len < self.max_draft else -1
        speedup = self.speedup()
        if self.config.adaptive and len(self.recent) >= ROUNDS_TO_JUDGE and speedup < 1.0:
            self.active = False
            self._switch_offs += 1
            self._off_tokens = 0
            note = self.stats(f"costing time: {speedup:.2f}x of plain decoding over the last "
                              f"{len(self.recent)} rounds")
            self.recent.clear()
            return note
        return self.stats()

    def spec_s_per_token(self) -> float:
        """Typical cost per emitted token of the recent rounds: each round counts at the
        median cost of rounds of its row count, so the acceptance decides, not the noise."""
        seconds = sum(median(self.round_times[rows]) for rows, _ in self.recent)
        tokens = sum(n for _, n in self.recent)
        return seconds / tokens if tokens else 0.0

    def speedup(self) -> float:
        per_token = self.spec_s_per_token()
        return (self.plain_s or 0.0) / per_token if per_token else 0.0

    def stats(self, reason: str = "") -> SpecStats:
        return SpecStats(
            drafter=self.drafter.name, active=self.active, reason=reason,
            rounds=self.rounds, drafted=self.drafted, accepted=self.accepted,
            acceptance=self.accepted / self.drafted if self.drafted else 0.0,
            running_acceptance=(self.total_accepted / self.total_drafted
                                if self.total_drafted else 0.0),
            draft_len=self.draft_len, plain_s_per_token=self.plain_s or 0.0,
            spec_s_per_token=self.spec_s_per_token(), speedup=self.speedup())


def build_controller(config: SpeculativeConfig, target: LoadedModel,
                     model_config: ModelConfig) -> SpecController | None:
    """The controller for ``config.mode``, loading and checking a draft model if asked.

    Raises ConfigError (draft mode without a draft model), ModelFileError /
    ModelLoadError (a bad draft file, or one with another vocabulary).
    """
    mode = config.mode
    if mode == "off":
        return None
    if mode == "draft" and config.draft_model is None:
        raise ConfigError("speculative mode 'draft' needs a draft model "
                          "(--draft-model PATH or speculative.draft_model)")
    if config.draft_model is not None and mode in ("auto", "draft"):
        # The draft follows the target's window plus a round of drafts.
        draft_config = model_config.model_copy(update={
            "path": config.draft_model, "n_ctx": target.n_ctx + config.max_draft + 1})
        draft = load_model(draft_config)
        try:
            check_same_vocab(target, draft)
        except ModelLoadError:
            draft.close()
            raise
        drafter: Drafter = DraftModel(draft)
    else:
        drafter = PromptLookup(config.min_ngram, config.max_ngram)
    # A batch-invariant target stays invariant only up to lm.invariant_rows rows: the
    # pending token plus the drafts.
    rows = target.invariant_rows
    return SpecController(drafter, config,
                          max_draft=min(config.max_draft, rows - 1) if rows else 0,
                          even_rows=not target.info.output_on_gpu)
