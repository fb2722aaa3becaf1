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

from engine.chat_format import ChatMessage
from engine.config import SamplingConfig
from engine.errors import PromptError
from engine.events import Event, ModelLoaded


class ChatEngine(ABC):
    @property
    @abstractmethod
    def info(self) -> ModelLoaded | None:
        """What was loaded, once ``start`` has returned."""

    @abstractmethod
    async def start(self) -> ModelLoaded:
        """Load the model. Safe to call once; later calls return the same info."""

    @abstractmethod
    def chat(self, messages: Sequence[ChatMessage], sampling: SamplingConfig | None = None,
             *, ignore_eos: bool = False) -> AsyncIterator[Event]:
        """Generate the assistant's reply to ``messages`` as a stream of events.

        Replies run one at a time; a second call waits for the first to finish.
        Leaving the iterator early cancels the reply.
        """

    @abstractmethod
    def cancel(self) -> None:
        """Stop the reply in flight within one token (a no-op when idle)."""

    @abstractmethod
    async def close(self) -> None:
        """Cancel anything in flight and free the model."""


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
