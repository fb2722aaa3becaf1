"""The state a turn carries through the token loop: the request, the cache's
bookkeeping, the turn's counters, and the Done event they add up to."""

from __future__ import annotations

import codecs
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from engine.api import ChatRequest
from engine.decode.kv_window import Span
from engine.decode.sampling.choice import Sampler
from engine.decode.speculation import SpecController
from engine.events import Done, EvictionReason, FinishReason


@dataclass
class KVState:
    tokens: list[int] = field(default_factory=list)
    """Tokens in the cache, by position."""
    n_keep: int = 0
    """Positions ``[0, n_keep)`` are never evicted (system prompt, sink tokens)."""
    dropped: int = 0
    """Conversation tokens evicted after the kept prefix: the cache holds
    ``window(rendered_tokens, n_keep, dropped)``."""
    rendered_text: str = ""
    """Prompt + reply text of the last turn, and its tokens as the model saw them:
    the next turn's prompt extends this text, so its tokens extend these exactly."""
    rendered_tokens: list[int] = field(default_factory=list)


@dataclass
class TurnStats:
    started: float
    prompt_tokens: int = 0
    reused_tokens: int = 0
    evaluated_tokens: int = 0
    prefill_s: float = 0.0
    first_token_at: float = 0.0
    last_token_at: float = 0.0
    sampled: int = 0
    """Tokens sampled, counting a final end-of-turn token that is not part of the reply."""
    completion_tokens: int = 0
    evictions: int = 0
    evicted_tokens: int = 0
    drafted: int = 0
    accepted: int = 0
    decode_s: float = 0.0
    """Seconds inside llama_decode from the first token on (the prefill's not counted)."""


@dataclass
class Turn:
    """One reply in the token loop: what was asked, how tokens are drawn, what came out."""

    req: ChatRequest
    stats: TurnStats
    sampler: Sampler
    spec: SpecController | None
    """This reply's speculation, if it speculates."""
    guard: float
    """Logits, greedy speculation only: a verified row whose choice leads its runner-up
    by less is left to a plain decode. 0: every row is trusted."""
    utf8: codecs.IncrementalDecoder
    """Pieces may end inside a UTF-8 character: text is emitted once it is whole."""
    tokens: list[int] = field(default_factory=list)
    """The reply so far; an end of turn is not part of it."""


@dataclass
class PendingEviction:
    """An eviction whose event waits for the next decode, which pays for the shift."""

    reason: EvictionReason
    span: Span
    evicted: int
    shifted: int
    used_before: int
    elapsed_s: float


def done_event(stats: TurnStats, reason: FinishReason, text: str) -> Done:
    end = time.perf_counter()
    decode_span = stats.last_token_at - stats.first_token_at
    # The first sample reads the prefill's logits; each later one costs one decode.
    decoded = max(0, stats.sampled - 1)
    prefill_rate = stats.evaluated_tokens / stats.prefill_s if stats.prefill_s else 0.0
    return Done(
        finish_reason=reason,
        prompt_tokens=stats.prompt_tokens,
        reused_tokens=stats.reused_tokens,
        evaluated_tokens=stats.evaluated_tokens,
        completion_tokens=stats.completion_tokens,
        ttft_s=(stats.first_token_at or end) - stats.started,
        prefill_tokens_per_s=prefill_rate,
        tokens_per_s=decoded / decode_span if decode_span > 0 else 0.0,
        total_s=end - stats.started,
        evictions=stats.evictions,
        evicted_tokens=stats.evicted_tokens,
        drafted_tokens=stats.drafted,
        accepted_tokens=stats.accepted,
        decode_s=stats.decode_s,
        text=text,
    )


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
