"""Events about the KV cache: its use, evictions, saved states and the context map."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from engine.events.base import _Event


class KVUsage(_Event):
    type: Literal["kv"] = "kv"
    reply: int | None = None
    """Which of the replies decoded together this event belongs to (the id the batch
    gave it; 0..n-1 for the N answers of ``ChatEngine.answers``); None for a reply
    decoded alone."""
    used_cells: int
    """KV cells holding tokens of the live conversation."""
    reserved_cells: int
    """Cells set aside for the reply in flight."""
    n_ctx: int | None
    """None when a server does not say."""
    bytes_per_cell: int | None
    """KV bytes one token occupies across all layers (K and V); None for a server."""
    used_bytes: int | None
    total_bytes: int | None
    kept_cells: int = 0
    """Cells at the start that eviction never touches (system prompt, sink tokens)."""
    evicted_total: int = 0
    """Tokens of this conversation evicted so far (no longer in the cache)."""
    source: Literal["engine", "server"] = "engine"
    """engine: kvchat's own KV manager; server: a remote server's report, where
    ``used_cells`` is the context this conversation takes (the server manages the
    cache; kvchat reserves and evicts nothing there)."""
    server_kv_usage: float | None = None
    """Share (0..1) of the server's whole KV cache in use, all requests together,
    from its metrics; None when it does not export one."""


EvictionReason = Literal["generation", "prompt"]


class Eviction(_Event):
    """Cells dropped from the KV cache to make room, and the rest shifted down in place."""

    type: Literal["eviction"] = "eviction"
    reply: int | None = None
    """Which of the replies decoded together this event belongs to (the id the batch
    gave it; 0..n-1 for the N answers of ``ChatEngine.answers``); None for a reply
    decoded alone."""
    reason: EvictionReason
    """generation: the reply filled the cache; prompt: the conversation plus the
    reply's reserve did not fit before the reply started."""
    evicted_tokens: int
    start: int
    """First evicted position (cache positions before the eviction)."""
    end: int
    """One past the last evicted position; ``end - start`` may exceed the cells
    evicted when part of the span was never in the cache."""
    kept_tokens: int
    """Cells kept at the start (system prompt and sink tokens)."""
    shifted_tokens: int
    """Cells after the span moved down by ``end - start`` positions, not re-evaluated."""
    at_turn_boundary: bool
    """True when the span ends where a turn ends, so no message was cut in two."""
    used_before: int
    used_after: int
    elapsed_s: float
    """seq_rm + seq_add bookkeeping in llama.cpp."""
    shift_s: float
    """The first decode after the eviction, which applies llama.cpp's deferred RoPE
    shift to every shifted cell (it also evaluates ``shift_tokens`` new tokens)."""
    shift_tokens: int
    evicted_total: int
    """Tokens of this conversation evicted so far, this eviction included."""


class PromptTruncated(_Event):
    """The new message did not fit in the context with room for a reply: its oldest
    tokens were dropped and the model sees only the rest."""

    type: Literal["prompt_truncated"] = "prompt_truncated"
    message_tokens: int
    """Tokens this turn added (the message and its turn markers)."""
    cut_tokens: int
    n_ctx: int
    message: str
    """One line for a person."""


class ContextMap(_Event):
    """Which tokens of each message are in the KV cache, in logical positions (the
    conversation as rendered, nothing evicted): sent after an eviction and before ``done``."""

    type: Literal["context"] = "context"
    reply: int | None = None
    """Which of the replies decoded together this event belongs to (the id the batch
    gave it; 0..n-1 for the N answers of ``ChatEngine.answers``); None for a reply
    decoded alone."""
    spans: list[tuple[str, int, int]]
    """Each message of the request, then the reply: its role and its tokens ``[start,
    end)``, from its text to its end-of-turn token (turn headers lie between spans)."""
    n_keep: int
    """``[0, n_keep)`` is never evicted (system prompt, sink tokens)."""
    evicted: list[tuple[int, int, str]] = Field(default_factory=list)
    """Spans gone from the cache, each with its eviction's reason (``earlier``: before
    the engine's record of this window)."""
    cached_end: int
    """Tokens before this are in the cache, but for ``evicted``."""
    restored: list[tuple[int, int]] = Field(default_factory=list)
    """Spans this turn restored from a saved state (engine/cache/)."""
    cut: int = 0
    """Tokens of the turn's own message cut to fit (``prompt_truncated``)."""


StateCacheAction = Literal["save", "restore", "miss", "evict", "drop"]


class StateCacheNote(_Event):
    """The state cache (engine/cache/) saved, restored, missed or evicted a
    conversation's KV state; with the pool's totals after it, for the KV pane."""

    type: Literal["state_cache"] = "state_cache"
    reply: int | None = None
    """With replies decoded together, the one whose start saved, restored or missed
    the state (the id the batch gave it; 0..n-1 for the N answers of
    ``ChatEngine.answers``); None for a reply decoded alone."""
    action: StateCacheAction
    """drop: a save not kept (larger than the budgets, a full disk, a pending shift)."""
    tier: Literal["ram", "disk"] | None = None
    tokens: int = 0
    """Cells saved, evicted, or restored (the shared prefix kept)."""
    bytes: int = 0
    ms: float = 0.0
    reason: str = ""
    """Why, for a miss, an eviction or a drop: one line."""
    entries: int = 0
    ram_bytes: int = 0
    ram_budget: int = 0
    disk_bytes: int = 0
    disk_budget: int = 0
