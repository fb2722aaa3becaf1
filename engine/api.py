"""The interface every engine backend implements; the UIs see engines only through it.

Errors: ``start`` raises :class:`~engine.errors.ModelFileError` (missing, empty,
truncated or foreign file), :class:`~engine.errors.ModelLoadError` (llama.cpp or the
backend refused it) or :class:`~engine.errors.EngineClosed`. ``chat`` raises
:class:`~engine.errors.PromptError` for an empty or non-UTF-8 message and
:class:`~engine.errors.EngineClosed`; everything that goes wrong while generating
arrives as an :class:`~engine.events.Error` event, after which the iterator ends.
Every reply ends with exactly one ``Done`` or ``Error`` event.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict

from engine.config import SamplingConfig
from engine.errors import EngineClosed, PromptError
from engine.events import Event, ModelLoaded
from engine.structured.spec import OutputSpec

Role = Literal["system", "user", "assistant"]


class ChatMessage(BaseModel):
    model_config = ConfigDict(frozen=True)

    role: Role
    content: str


class ChatRequest(BaseModel):
    """One reply to generate: what every backend's ``chat`` takes, and what the process
    wire carries to the engine process."""

    model_config = ConfigDict(frozen=True)

    messages: tuple[ChatMessage, ...]
    sampling: SamplingConfig | None = None
    """None: the engine's default sampling."""
    ignore_eos: bool = False
    """Ban end-of-turn tokens and generate exactly ``max_tokens`` (for benchmarks)."""
    reserve: int | None = None
    """Cells to free for the reply before it starts; None means the KV policy's."""
    constraint: OutputSpec | None = None
    """Decode under the grammar of this output format (the retry ladder's last step)."""


@dataclass(frozen=True)
class ModelAnswer:
    """The model's own answer to which route a prompt takes (``ChatEngine.classify``)."""

    route: str
    confidence: float
    """Probability of the answer's first token among the routes' first tokens."""
    elapsed_ms: float
    prompt_tokens: int


class ChatEngine(ABC):
    generates_on_thread: bool = False
    """True when replies are generated on a thread of the caller's process, where they
    need Python's interpreter lock between two tokens: the app then shortens the
    switch interval so that its screen updates hand the lock over sooner."""

    @property
    @abstractmethod
    def info(self) -> ModelLoaded | None:
        """What was loaded, once ``start`` has returned."""

    @abstractmethod
    async def start(self) -> ModelLoaded:
        """Load the model. Safe to call once; later calls return the same info."""

    @abstractmethod
    def chat(self, messages: Sequence[ChatMessage], sampling: SamplingConfig | None = None,
             *, ignore_eos: bool = False, reserve: int | None = None,
             constraint: OutputSpec | None = None) -> AsyncIterator[Event]:
        """Generate the assistant's reply to ``messages`` as a stream of events.

        Replies run one at a time; a second call waits for the first to finish.
        Leaving the iterator early cancels the reply. An engine that had to load its
        model again for this reply (a new engine process after a crash) begins the
        stream with the new ``model_loaded`` and ``memory`` events.

        ``reserve``: KV cells to make free for the reply before it starts (evicting
        old turns first if needed), as a route's template decides; None uses the
        engine's policy (``kv.reply_reserve``). The engine caps it at the reply's
        ``max_tokens`` and half the context; ``kv`` events report what was kept free
        (``reserved_cells``).

        ``constraint``: decode so that the reply cannot fail ``constraint``'s check (a
        grammar, or the server's structured-output mode): the retry ladder's strictest
        step. A backend that cannot enforce it ends the reply with an ``Error`` event of
        code ``constraint_unsupported`` before generating anything; a schema it cannot
        compile is code ``constraint_invalid``.
        """

    def count_tokens(self, text: str) -> int | None:
        """Tokens ``text`` takes with the loaded model's tokenizer (no BOS, no turn
        markers), or None when this backend has no local tokenizer or nothing is
        loaded yet. Callers fall back to an estimate (``engine.routing.token_count``)."""
        return None

    async def classify(self, text: str, routes: Sequence[str],
                       descriptions: dict[str, str]) -> ModelAnswer | None:
        """Ask the model which of ``routes`` ``text`` belongs to, with a one-word
        grammar-constrained answer that leaves the conversation's KV cache alone; None
        where the backend cannot (the router's own decision stands)."""
        return None

    @abstractmethod
    def cancel(self) -> None:
        """Stop the reply in flight within one token (a no-op when idle)."""

    @abstractmethod
    async def close(self) -> None:
        """Cancel anything in flight and free the model."""


def check_request(messages: Sequence[ChatMessage], closed: bool) -> list[ChatMessage]:
    """What every backend's ``chat`` checks before anything starts: the engine is open
    and each user message can be sent. Returns the messages as a list."""
    if closed:
        raise EngineClosed("the engine is closed")
    for msg in messages:
        if msg.role == "user":
            check_prompt(msg.content)
    return list(messages)


def check_prompt(text: str) -> str:
    """Reject prompts that cannot be sent; returns the text unchanged."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start]
        byte = ord(bad) - 0xDC00 if 0xDC80 <= ord(bad) <= 0xDCFF else ord(bad)
        raise PromptError(f"the prompt is not valid UTF-8 (byte 0x{byte:02x} at character "
                          f"{exc.start})", code="prompt_not_utf8") from None
    if not text.strip():
        raise PromptError("the prompt is empty", code="prompt_empty")
    return text
