"""The conversation: user prompts, streamed Markdown replies, a stats line per reply."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Markdown, Static
from textual.widgets._markdown import MarkdownStream

from engine.events import Done, RouteDecision


class UserMessage(Static):
    """A prompt as the user typed it (shown literally, not as Markdown)."""

    def __init__(self, text: str) -> None:
        super().__init__(text, markup=False)


class ReplyMessage(Vertical):
    """One assistant reply: Markdown body (code fences highlighted by Pygments) and a
    small stats line. While streaming, text goes through Markdown's own stream, which
    batches updates instead of re-parsing the whole reply per token."""

    def __init__(self, text: str = "", note: str = "") -> None:
        super().__init__()
        self._initial = text
        self._note = note
        self._stream: MarkdownStream | None = None
        self.text = text

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

    async def finish(self, note: str) -> None:
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None
        self.set_note(note)

    def set_note(self, note: str) -> None:
        self.query_one(".reply-stats", Static).update(note)


def route_note(route: RouteDecision) -> str:
    """``route code 0.67`` (or ``route qa (chosen)`` for an override)."""
    how = "chosen" if route.source == "override" else f"{route.confidence:.2f}"
    return f"route {route.route} {how}"


def done_note(done: Done) -> str:
    parts = [f"{done.completion_tokens} tokens", f"{done.tokens_per_s:.1f} tok/s",
             f"ttft {done.ttft_s * 1000:.0f} ms",
             f"prompt {done.evaluated_tokens} new / {done.reused_tokens} cached"]
    if done.evictions:
        parts.append(f"{done.evictions} evictions ({done.evicted_tokens} tokens)")
    if done.finish_reason != "stop":
        parts.append(done.finish_reason.replace("_", " "))
    return " · ".join(parts)


class ChatPane(VerticalScroll):
    """Scrolls with the stream (anchored) unless the user scrolls away."""

    def on_mount(self) -> None:
        self.anchor()

    async def add_user(self, text: str) -> UserMessage:
        widget = UserMessage(text)
        await self.mount(widget)
        return widget

    async def add_reply(self, text: str = "", note: str = "") -> ReplyMessage:
        widget = ReplyMessage(text, note)
        await self.mount(widget)
        return widget

    async def add_notice(self, text: str, before: ReplyMessage | None = None) -> None:
        await self.mount(Static(text, classes="notice", markup=False), before=before)
