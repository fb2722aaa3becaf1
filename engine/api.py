"""The interface every engine backend implements; the UIs see engines only through it.

Errors: ``start`` raises :class:`~engine.errors.ModelFileError` (missing, empty,
truncated or foreign file, refused by kvchat's checks or by llama.cpp),
:class:`~engine.errors.ModelLoadError` (no context of that size, or the backend
refused it) or :class:`~engine.errors.EngineClosed`. A user message that
cannot be sent (empty, or not UTF-8) is refused where it is made: constructing its
:class:`ChatMessage` raises :class:`~engine.errors.PromptError`, so every request that
reaches a backend holds only prompts that can be sent. ``chat`` raises
:class:`~engine.errors.EngineClosed`; everything that goes wrong while generating
arrives as an :class:`~engine.events.Error` event, after which the iterator ends.
Every reply ends with exactly one ``Done`` or ``Error`` event.
"""

from __future__ import annotations

import asyncio
import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

from engine.config import SamplingConfig
from engine.errors import EngineClosed, KvchatError, PromptError, SwitchUnsupported
from engine.events import Event, MemorySnapshot, ModelLoaded
from engine.structured.spec import OutputSpec

Role = Literal["system", "user", "assistant"]

CANCEL_POLL_S = 0.05
"""How often a backend that cannot be woken by a reply's cancel event looks at it."""


class ChatMessage(BaseModel):
    """One message of a conversation. A user message must be sendable: making one that
    is empty (or only whitespace) or not valid UTF-8 raises
    :class:`~engine.errors.PromptError` (codes ``prompt_empty``, ``prompt_not_utf8``),
    before anything is stored or sent."""

    model_config = ConfigDict(frozen=True)

    role: Role
    content: str

    @model_validator(mode="after")
    def _sendable(self) -> ChatMessage:
        if self.role == "user":
            check_prompt(self.content)
        return self


class ChatRequest(BaseModel):
    """One reply to generate: what every backend's ``chat`` takes, and what the process
    wire carries to the engine process. Its user messages are valid prompts (see
    :class:`ChatMessage`)."""

    model_config = ConfigDict(frozen=True)

    messages: tuple[ChatMessage, ...]
    """The conversation so far, ending with the message to answer."""
    sampling: SamplingConfig | None = None
    """None: the engine's default sampling. Each backend resolves it once, as the reply
    starts, so the code that generates always sees it set."""
    ignore_eos: bool = False
    """Ban end-of-turn tokens and generate exactly ``max_tokens`` (for benchmarks)."""
    reserve: int | None = None
    """KV cells to make free for the reply before it starts (evicting old turns first
    if needed), as a route's template decides; None uses the engine's policy
    (``kv.reply_reserve``). The engine caps it at the reply's ``max_tokens`` and half
    the context; ``kv`` events report what was kept free (``reserved_cells``). A server
    backend ignores it: the server owns its KV cache."""
    constraint: OutputSpec | None = None
    """Decode so that the reply cannot fail this format's check (a grammar, or the
    server's structured-output mode): the retry ladder's strictest step. A backend that
    cannot enforce it ends the reply with an ``Error`` event of code
    ``constraint_unsupported`` before generating anything; a schema it cannot compile is
    code ``constraint_invalid``."""

    def with_default_sampling(self, default: SamplingConfig) -> ChatRequest:
        """This request with ``sampling`` set: its own, else ``default``."""
        if self.sampling is not None:
            return self
        return self.model_copy(update={"sampling": default})


@dataclass(frozen=True)
class ModelAnswer:
    """The model's own answer to which route a prompt takes (``ChatEngine.classify``)."""

    route: str
    confidence: float
    """Probability of the answer's first token among the routes' first tokens."""
    elapsed_ms: float
    prompt_tokens: int


class ModelChoice(BaseModel):
    """A model the engine could switch to (``ChatEngine.list_models``), described from
    its header and planned for this engine's settings and budget, never loaded."""

    model_config = ConfigDict(frozen=True)

    name: str
    """As ``kvchat models`` lists it (and ``--model NAME`` takes it)."""
    source: str
    """bundled, config, lmstudio, ollama, huggingface or llama.cpp."""
    path: str
    architecture: str | None = None
    parameters: int | None = None
    quant: str | None = None
    file_bytes: int | None = None
    chat_template: bool = False
    verdict: str
    """``fits``, ``N of M layers on GPU``, ``does not fit``, ``no plan`` (an
    architecture the planner does not know: llama.cpp decides) or ``broken``."""
    reason: str = ""
    """The plan's sentence (what it needs of what budget), or why the file is broken."""
    current: bool = False
    """The model loaded now."""

    @property
    def runnable(self) -> bool:
        """Whether ``switch_model`` would try to load it (it still may fail)."""
        return self.verdict not in ("does not fit", "broken")


class ChatEngine(ABC):
    parallel_replies: int = 1
    """Replies this engine generates at once (``--parallel``); ``chat`` calls beyond that
    wait for one to finish (an engine that queues them says so with ``queued`` events).
    A server sharing the engine (``kvchat serve``) starts this many replies at a
    time and queues the rest."""
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

    @property
    def memory(self) -> list[MemorySnapshot]:
        """The load's memory snapshots, planned then measured; empty where the backend
        plans no memory (a server) or nothing is loaded yet."""
        return []

    @abstractmethod
    def chat(self, request: ChatRequest) -> AsyncIterator[Event]:
        """Generate the assistant's reply to ``request.messages`` as a stream of events.

        Up to ``parallel_replies`` replies run at once; a call beyond that waits for one
        to finish. ``stream`` is the same with a cancel of the reply's own.
        Leaving the iterator early cancels the reply. An engine that had to load its
        model again for this reply (a new engine process after a crash) begins the
        stream with the new ``model_loaded`` and ``memory`` events. Raises
        :class:`~engine.errors.EngineClosed` at once, before the stream starts, once
        the engine is closed.
        """

    async def stream(self, request: ChatRequest,
                     cancel: threading.Event) -> AsyncIterator[Event]:
        """``chat``, stopped by setting ``cancel`` (from any thread, before or while it
        runs): this reply alone ends, ``cancelled``, and the others in flight go on.
        This default serves an engine that generates one reply at a time: setting
        ``cancel`` calls :meth:`cancel` (looked at every :data:`CANCEL_POLL_S`).
        Raises as ``chat`` does."""
        events = self.chat(request)
        watch = asyncio.ensure_future(when_set(cancel, self.cancel))
        try:
            async for event in events:
                yield event
        finally:
            watch.cancel()
            close = getattr(events, "aclose", None)
            if close is not None:
                await close()

    def answers(self, request: ChatRequest, n: int,
                cancel: threading.Event | None = None) -> AsyncIterator[Event]:
        """``n`` alternative replies to ``request``, decoded together from one
        evaluation of its prompt: one stream whose events carry ``reply`` 0..n-1, each
        reply ending with its own ``Done`` or ``Error``; setting ``cancel`` stops all
        ``n``. Raises :class:`~engine.errors.KvchatError` at once where the engine
        cannot (this default) or has too few sequences for ``n``."""
        raise KvchatError("this engine cannot give several answers at once")

    def pace_events(self, gap_s: float) -> None:
        """Hand each later reply's events over at most every ``gap_s`` once its first
        token is out, tokens merged, for a client that shows them in frames.

        Only a backend whose hand-overs cost the client something applies it: the
        engine process, where each batch sent wakes both processes. The default does
        nothing: a backend in the caller's process hands events over as they come (the
        client gathers them into its own frames), and a server's stream arrives at the
        server's pace."""
        return None

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

    async def list_models(self, dirs: Sequence[str | Path] = ()) -> list[ModelChoice]:
        """The models found here (the bundled ones, ``dirs``, and the other places
        ``kvchat models`` looks), each with its memory plan's verdict for this engine's
        settings, counting the memory the loaded model would give back. Reads headers
        only, off the caller's thread. Raises
        :class:`~engine.errors.SwitchUnsupported` where the backend cannot switch."""
        raise SwitchUnsupported("this backend cannot switch models")

    async def switch_model(self, path: Path | str) -> ModelLoaded:
        """Replace the loaded model by the GGUF at ``path``, with the same settings.

        The file is read and its memory planned first: a missing or broken file
        (:class:`~engine.errors.ModelFileError`) or a plan that does not fit
        (:class:`~engine.errors.ModelDoesNotFit`) is refused with the model in use left
        as it was. Otherwise the loaded model and its context are freed before the new
        one loads (never two models in memory), and the KV cache starts empty: the next
        reply evaluates its whole prompt, rendered with the new model's chat format.
        When the new model fails to load, the previous one is loaded again and the
        error (:class:`~engine.errors.ModelLoadError`) says so; if that fails too,
        ``info`` is None, replies end with an error, and another switch can load one.
        A reply in flight finishes first. Raises
        :class:`~engine.errors.SwitchUnsupported` where the backend cannot switch."""
        raise SwitchUnsupported("this backend cannot switch models")

    @abstractmethod
    def cancel(self) -> None:
        """Stop every reply in flight within one token (a no-op when idle); ``stream``'s
        cancel stops one."""

    @abstractmethod
    async def close(self) -> None:
        """Cancel anything in flight and free the model."""


async def when_set(event: threading.Event, then: Callable[[], None]) -> None:
    """Call ``then`` once ``event`` is set (from any thread): a cancel event watched by
    a coroutine that cannot block on it. Cancel the task to stop watching."""
    while not event.is_set():
        await asyncio.sleep(CANCEL_POLL_S)
    then()


def check_open(closed: bool) -> None:
    """What every backend's ``chat`` checks before anything starts (the request's
    messages were checked when they were made)."""
    if closed:
        raise EngineClosed("the engine is closed")


def check_prompt(text: str) -> str:
    """Reject prompts that cannot be sent (what :class:`ChatMessage` checks for a user
    message); returns the text unchanged."""
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
