"""The engine's event contract.

Every observable thing the engine does is one of these pydantic models. The same
objects feed the TUI, the conversation store and ``kvchat ask --events jsonl``, so
fields may be added freely but renamed only with care. Each carries a literal
``type`` field; :data:`Event` is the discriminated union over all of them.

The events live in modules by what they describe (``model``, ``turn``, ``kv``,
``structured``); everything is imported from here.

Replies decoded together in one batch (``--parallel``, ``ChatEngine.answers``) share an
engine, and N answers share one stream: the events of a reply (``prompt``, ``token``,
``progress``, ``kv``, ``eviction``, ``spec``, ``queued``, ``done``, ``error``) carry its
``reply`` number there, None for a reply decoded alone. A ``state_cache`` event
carries the reply whose start saved, restored or missed a state.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, TypeAdapter

from engine.events.base import _Event
from engine.events.kv import (
    ContextMap,
    Eviction,
    EvictionReason,
    KVUsage,
    PromptTruncated,
    StateCacheAction,
    StateCacheNote,
)
from engine.events.model import (
    ChatFormatFallback,
    MemorySnapshot,
    MemoryStage,
    ModelLoaded,
)
from engine.events.structured import (
    OutputCheck,
    Retry,
    RetryStrategy,
)
from engine.events.turn import (
    Done,
    Error,
    FinishReason,
    Progress,
    PromptEvaluated,
    Queued,
    RouteDecision,
    SpecStats,
    TokenChunk,
    TurnStarted,
)

Event = Annotated[
    ModelLoaded | MemorySnapshot | TurnStarted | PromptEvaluated | TokenChunk | Progress
    | KVUsage | Eviction | PromptTruncated | SpecStats | RouteDecision | OutputCheck | Retry
    | ChatFormatFallback | Queued | Done | Error | StateCacheNote | ContextMap,
    Field(discriminator="type"),
]

EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


def parse_event(line: str | bytes) -> Event:
    """Parse one JSON line (as written by ``--events jsonl``) back into an event."""
    return EVENT_ADAPTER.validate_json(line)

__all__ = [
    "EVENT_ADAPTER",
    "ChatFormatFallback",
    "ContextMap",
    "Done",
    "Error",
    "Event",
    "Eviction",
    "EvictionReason",
    "FinishReason",
    "KVUsage",
    "MemorySnapshot",
    "MemoryStage",
    "ModelLoaded",
    "OutputCheck",
    "Progress",
    "PromptEvaluated",
    "PromptTruncated",
    "Queued",
    "Retry",
    "RetryStrategy",
    "RouteDecision",
    "SpecStats",
    "StateCacheAction",
    "StateCacheNote",
    "TokenChunk",
    "TurnStarted",
    "_Event",
    "parse_event",
]
