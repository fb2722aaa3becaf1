"""The conversation: user prompts, streamed Markdown replies, a stats line per reply.

A structured reply that was retried keeps its earlier attempts, collapsed and marked
malformed with their error, above the attempt that counts.
"""

from __future__ import annotations

import re

from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Collapsible, Markdown, Static
from textual.widgets._markdown import MarkdownStream

from engine.events import OutputCheck, Retry
from tui.notes import attempt_title

FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def code_blocks(text: str) -> list[str]:
    """The fenced code blocks of a Markdown reply, in order."""
    return [m.group(1) for m in FENCE.finditer(text)]


class UserMessage(Static):
    """A prompt as the user typed it (shown literally, not as Markdown)."""

    def __init__(self, text: str) -> None:
        super().__init__(text, markup=False)


class ReplyMessage(Vertical):
    """One assistant reply: Markdown body (code fences highlighted by Pygments) and a
    small stats line. While streaming, text goes through Markdown's own stream, which
    parses only the last block again instead of the whole reply per token."""

    def __init__(self, text: str = "", note: str = "", message_id: int | None = None) -> None:
        super().__init__()
        self.message_id = message_id
        """The reply's row in the store, once known."""
        self._initial = text
        self._note = note
        self._stream: MarkdownStream | None = None
        self.text = text
        """The text of the attempt being shown (the final one once finished)."""
        self.attempt = 1
        self.strategy = "as_generated"
        self.strategies: list[str] = []
        """Strategies of the retries, in order."""
        self.checks: dict[int, OutputCheck] = {}

    def compose(self) -> ComposeResult:
        yield Markdown(self._initial, classes="reply-body")
        yield Static(self._note, classes="reply-stats", markup=False)

    @property
    def body(self) -> Markdown:
        return self.query_one(".reply-body", Markdown)

    async def append(self, fragment: str) -> None:
        if self._stream is None:
            self._stream = Markdown.get_stream(self.body)
        self.text += fragment
        await self._stream.write(fragment)

    async def _stop_stream(self) -> None:
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None

    def record_check(self, check: OutputCheck) -> None:
        self.checks[check.attempt] = check

    async def start_attempt(self, retry: Retry) -> None:
        """Fold the attempt shown so far away and start an empty body for the next."""
        await self._stop_stream()
        check = self.checks.get(self.attempt)
        error = check.errors[0] if check is not None and check.errors else retry.reason
        await self.add_folded(self.attempt, self.strategy, error, self.text)
        self.attempt, self.strategy = retry.attempt, retry.strategy
        self.strategies.append(retry.strategy)
        self.text = ""
        await self.body.update("")

    async def add_folded(self, number: int, strategy: str, error: str, text: str) -> None:
        """An earlier attempt, collapsed above the body and marked malformed."""
        raw = Static(text or "(no text)", markup=False, classes="attempt-text")
        folded = Collapsible(raw, title=attempt_title(number, strategy, error),
                             collapsed=True, classes="attempt")
        await self.mount(folded, before=self.body)

    async def finish(self, note: str, final_text: str | None = None) -> None:
        await self._stop_stream()
        # The final text is authoritative: a repaired reply streamed no tokens of its own.
        if final_text is not None and final_text != self.text:
            self.text = final_text
            await self.body.update(final_text)
        self.set_note(note)

    def set_note(self, note: str) -> None:
        self.query_one(".reply-stats", Static).update(note)

    @property
    def note(self) -> str:
        return str(self.query_one(".reply-stats", Static).render())


class ChatPane(VerticalScroll):
    """Scrolls with the stream (anchored) unless the user scrolls away."""

    def on_mount(self) -> None:
        self.anchor()

    async def add_user(self, text: str) -> UserMessage:
        widget = UserMessage(text)
        await self.mount(widget)
        return widget

    async def add_reply(self, text: str = "", note: str = "",
                        message_id: int | None = None) -> ReplyMessage:
        widget = ReplyMessage(text, note, message_id)
        await self.mount(widget)
        return widget

    async def add_notice(self, text: str, before: ReplyMessage | None = None) -> None:
        await self.mount(Static(text, classes="notice", markup=False), before=before)

    async def clear(self) -> None:
        await self.remove_children()

    def last_reply(self) -> ReplyMessage | None:
        replies = self.query(ReplyMessage)
        return replies.last() if replies else None
