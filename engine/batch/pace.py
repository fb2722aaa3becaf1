"""How many prompt tokens a step may carry while replies stream: sized by time.

A step that reads a prompt chunk beside decoding replies makes every one of them wait
for it. So while replies decode, a step carries only as many prompt tokens as fit in
about ``STEP_RATIO`` plain decode steps, estimated from what the decoder measured: the
recent plain step's time and the prompt tokens per second of recent chunks. Until both
are known it starts at ``START_TOKENS``; the estimate grows at most twofold a step, so
one optimistic measurement cannot stall the streams. With nothing decoding, or only
replies that were asked together with the prompt being read (``streaming_before``),
prompts go at the full chunk. Pure arithmetic: the decoder times its steps and reports them here.

The plain step is measured on steps that carry no prompt, so while a prompt is read it
keeps its value from before: the streams' steps growing with the prompt's cells (every
row attends over the cells in use) count against the prompt's share, as the streams
feel it, until only the floor is left.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.batch.slots import Group, Slot

STEP_RATIO = 3.0
"""A step carrying prompt tokens takes at most about this many plain decode steps."""
START_TOKENS = 32
"""Prompt tokens a step carries beside decoding replies before anything is measured."""
FLOOR_TOKENS = 4
"""The least a prompt advances per step, however slow its tokens are."""
SMOOTHING = 0.25
"""Weight of the newest measurement in the running estimates."""


@dataclass
class PromptPace:
    """The decoder's recent timings, as :func:`prompt_budget` needs them."""

    plain_step_s: float = 0.0
    """A step's time with replies decoding and no prompt tokens (0: not measured)."""
    prompt_tokens_per_s: float = 0.0
    """Prompt tokens read per second of step time beyond the plain step (0: not
    measured)."""
    last_prompt_tokens: int = 0
    """Prompt tokens of the last step that carried some beside decoding replies."""

    def observe(self, elapsed_s: float, decoding: int, prompt_tokens: int) -> None:
        """One step took ``elapsed_s`` (decode and sampling) for ``decoding`` replies'
        tokens and ``prompt_tokens`` of prompts."""
        if elapsed_s <= 0.0:
            return
        if not prompt_tokens:
            if decoding:
                self.plain_step_s = _smooth(self.plain_step_s, elapsed_s)
            return
        # Beside decoding replies, the prompt's share is what the step took beyond a
        # plain one; unknown, the whole step is charged to it (a slower, safe estimate).
        plain = self.plain_step_s if decoding else 0.0
        spent = max(elapsed_s - plain, 0.1 * elapsed_s)
        self.prompt_tokens_per_s = _smooth(self.prompt_tokens_per_s, prompt_tokens / spent)
        if decoding:
            self.last_prompt_tokens = prompt_tokens


def prompt_budget(pace: PromptPace, decoding: int, chunk: int) -> int:
    """Prompt tokens the next step may carry beside ``decoding`` replies' tokens:
    ``chunk`` when none decode, else what fits in ``STEP_RATIO`` plain steps at the
    measured prompt rate, between ``FLOOR_TOKENS`` and ``chunk``."""
    if not decoding:
        return chunk
    ceiling = min(chunk, max(START_TOKENS, 2 * pace.last_prompt_tokens))
    if not pace.plain_step_s or not pace.prompt_tokens_per_s:
        return min(chunk, START_TOKENS)
    fits = int((STEP_RATIO - 1.0) * pace.plain_step_s * pace.prompt_tokens_per_s)
    return min(ceiling, max(FLOOR_TOKENS, fits), chunk)


def streaming_before(decoding: list[Slot], groups: Iterable[Group]) -> int:
    """The decoding replies that were already streaming when the next prompt to read
    arrived: only they are held to the pace. Replies asked at once (N clients at the
    same moment, a batch's start) have their prompts read at the full chunk, as
    llama-batched-bench reads all its prompts before decoding; a prompt joining
    streams that were already going is paced."""
    arrived = next((g.leader.stats.started for g in groups if g.phase == "prefill"), None)
    if arrived is None:
        return len(decoding)
    return sum(1 for s in decoding if 0.0 < s.stats.first_token_at < arrived)


def _smooth(old: float, new: float) -> float:
    return new if not old else old + SMOOTHING * (new - old)
