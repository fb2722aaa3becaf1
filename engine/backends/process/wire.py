"""The messages between the app's process and its engine process (engine.backends.process.engine).

One JSON object per line each way, pydantic-typed and discriminated like the events:
requests carry ``op``, replies carry ``kind``. Events travel as themselves, so the
child's stream reaches the app exactly as ``LocalEngine`` would have produced it.
"""

from __future__ import annotations

import asyncio
from typing import IO, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from engine import errors
from engine.api import ChatRequest, ModelChoice
from engine.config import (
    CacheConfig,
    KVCacheConfig,
    ModelConfig,
    SamplingConfig,
    SpeculativeConfig,
)
from engine.events import Event, MemorySnapshot, ModelLoaded

LINE_LIMIT = 1 << 28
"""Longest line either side reads (a whole conversation's messages travel in one)."""


async def pipe_streams(read_end: IO[bytes], write_end: IO[bytes],
                       ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """asyncio streams over two pipe ends of this process."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), read_end)
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin,
                                                        write_end)
    return reader, asyncio.StreamWriter(transport, protocol, None, loop)


class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True)


# -- requests: app -> engine process ---------------------------------------------------


class Start(_Wire):
    op: Literal["start"] = "start"
    model: ModelConfig
    sampling: SamplingConfig
    kv: KVCacheConfig
    speculative: SpeculativeConfig
    cache: CacheConfig = Field(default_factory=CacheConfig)
    switch: bool = False
    """Load ``model`` as a switch does (``ChatEngine.switch_model``): refused, with
    nothing loaded, when the file is broken or its plan does not fit."""


class Chat(_Wire):
    op: Literal["chat"] = "chat"
    id: int
    request: ChatRequest
    """As the app's engine was asked; sampling None means the child's default (``Start``)."""
    relay_gap_s: float = 0.0
    """Send the reply's events at most this often once its first token is out
    (``ChatEngine.pace_events``); 0: as they come."""
    n: int = 1
    """Answers to decode together (``ChatEngine.answers``), their events tagged
    ``reply`` 0..n-1; 1: a plain reply."""


class Cancel(_Wire):
    op: Literal["cancel"] = "cancel"
    id: int
    """The reply to stop; a reply that has already ended is left alone."""


class Classify(_Wire):
    op: Literal["classify"] = "classify"
    id: int
    text: str
    routes: list[str]
    descriptions: dict[str, str]


class ListModels(_Wire):
    op: Literal["list_models"] = "list_models"
    id: int
    dirs: list[str]
    model: ModelConfig
    """The settings to plan with, for a process that has loaded nothing."""


class Switch(_Wire):
    """Replace the model (``ChatEngine.switch_model``); answered by ``Switched``."""

    op: Literal["switch"] = "switch"
    id: int
    path: str


class Close(_Wire):
    op: Literal["close"] = "close"


ToChild = Annotated[Start | Chat | Cancel | Classify | ListModels | Switch | Close,
                    Field(discriminator="op")]
REQUEST_ADAPTER: TypeAdapter[ToChild] = TypeAdapter(ToChild)


# -- replies: engine process -> app ----------------------------------------------------


class Loaded(_Wire):
    kind: Literal["loaded"] = "loaded"
    info: ModelLoaded
    memory: list[MemorySnapshot]


class Failed(_Wire):
    """A request raised one of the engine's documented errors."""

    kind: Literal["failed"] = "failed"
    id: int | None = None
    """The request's id; None for ``start``."""
    error: str
    """The class name in engine.errors, raised again on the app's side."""
    message: str


class StreamEvent(_Wire):
    kind: Literal["event"] = "event"
    id: int
    event: Event


class Answer(_Wire):
    kind: Literal["answer"] = "answer"
    id: int
    route: str | None = None
    """None: the model gave no answer (the router's decision stands)."""
    confidence: float = 0.0
    elapsed_ms: float = 0.0
    prompt_tokens: int = 0


class Models(_Wire):
    kind: Literal["models"] = "models"
    id: int
    models: list[ModelChoice]


class Switched(_Wire):
    """How a switch ended: the model loaded now (the new one; after a failure the
    previous one again, or None) and, when it failed, the error as ``Failed`` has it."""

    kind: Literal["switched"] = "switched"
    id: int
    info: ModelLoaded | None
    memory: list[MemorySnapshot]
    error: str | None = None
    message: str = ""


class Closed(_Wire):
    kind: Literal["closed"] = "closed"


FromChild = Annotated[Loaded | Failed | StreamEvent | Answer | Models | Switched | Closed,
                      Field(discriminator="kind")]
REPLY_ADAPTER: TypeAdapter[FromChild] = TypeAdapter(FromChild)


def encode(message: BaseModel) -> bytes:
    return message.model_dump_json().encode("utf-8") + b"\n"


def failure(exc: errors.KvchatError, request_id: int | None = None) -> Failed:
    return Failed(id=request_id, error=type(exc).__name__, message=exc.message)


def raised(failed: Failed) -> errors.KvchatError:
    """The error ``failed`` describes, as the class the engine raised (KvchatError for a
    name this side does not know)."""
    cls = getattr(errors, failed.error, None)
    if not (isinstance(cls, type) and issubclass(cls, errors.KvchatError)):
        return errors.KvchatError(failed.message)
    if cls is errors.PromptError:
        return errors.PromptError(failed.message)
    return cls(failed.message)
