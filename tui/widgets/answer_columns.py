"""N answers to one message streaming side by side, one column each (``Ctrl+T``); once
all have ended, 1..N (or a click) keeps one as the reply."""

from __future__ import annotations

from typing import ClassVar

from textual import events
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.message import Message
from textual.widgets import Static

from tui.safe_text import visible


class AnswerColumn(Vertical):
    def __init__(self, index: int) -> None:
        super().__init__(classes="answer")
        self.index = index
        self.text = ""
        self.over = False

    def compose(self) -> ComposeResult:
        yield Static(f"answer {self.index + 1}", classes="answer-title")
        yield Static(classes="answer-body")
        yield Static("waiting…", classes="answer-note")

    def show_text(self) -> None:
        # Plain text, escaped: three Markdown documents a frame would cost the decode.
        self.query_one(".answer-body", Static).update(Content(visible(self.text)))

    def show_note(self, note: str) -> None:
        self.query_one(".answer-note", Static).update(Content(visible(note)))


class AnswerColumns(Horizontal, can_focus=True):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(str(k), f"pick({k - 1})", f"Keep {k}", show=k == 1) for k in range(1, 10)]

    class Picked(Message):
        """Answer ``index`` is kept as the reply."""

        def __init__(self, columns: AnswerColumns, index: int) -> None:
            super().__init__()
            self.columns = columns
            self.index = index

    def __init__(self, n: int) -> None:
        super().__init__(classes="answers")
        self.n = n
        self.picking = False
        """Every answer has ended: one may be kept."""
        self.reply_ids: list[int] = []
        """The answers' rows in the store, once all have ended."""
        self.conversation_id: int | None = None

    def compose(self) -> ComposeResult:
        for k in range(self.n):
            yield AnswerColumn(k)

    def column(self, k: int) -> AnswerColumn:
        return list(self.query_children(AnswerColumn))[k]

    def append(self, k: int, text: str) -> None:
        column = self.column(k)
        column.text += text
        column.show_text()

    def finish(self, k: int, note: str, text: str | None = None) -> None:
        column = self.column(k)
        if text is not None and text != column.text:
            column.text = text
            column.show_text()
        column.over = True
        column.show_note(note)
        if all(c.over for c in self.query_children(AnswerColumn)):
            self.picking = True
            self.add_class("-picking")
            for c in self.query_children(AnswerColumn):
                c.query_one(".answer-title", Static).update(
                    f"answer {c.index + 1}: {c.index + 1} keeps it")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "pick":
            return self.picking and int(parameters[0]) < self.n  # type: ignore[call-overload]
        return True

    def action_pick(self, index: int) -> None:
        if self.picking and 0 <= index < self.n:
            self.post_message(self.Picked(self, index))

    def on_click(self, event: events.Click) -> None:
        widget = event.widget
        while widget is not None and not isinstance(widget, AnswerColumn):
            widget = widget.parent  # type: ignore[assignment]
        if isinstance(widget, AnswerColumn):
            self.action_pick(widget.index)
