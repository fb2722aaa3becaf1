"""Pick one message of the conversation shown (to edit it, from the command palette)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from engine.store import MessageRow
from tui.safe_text import one_line


def message_label(row: MessageRow) -> Content:
    text = one_line(row.content)
    return Content(f"#{row.id} {row.role}: {text[:90]}{'…' if len(text) > 90 else ''}")


class MessagePicker(ModalScreen[int | None]):
    """Enter gives the highlighted message's id, Esc gives None; the newest message is
    highlighted first."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, question: str, rows: Sequence[MessageRow]) -> None:
        super().__init__(classes="dialog")
        self.question = question
        self.rows = list(rows)

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-box"):
            yield Static(self.question, markup=False)
            yield OptionList(*[Option(message_label(r), id=str(r.id)) for r in self.rows],
                             id="message-picker")

    def on_mount(self) -> None:
        options = self.query_one("#message-picker", OptionList)
        options.highlighted = len(self.rows) - 1 if self.rows else None
        options.focus()

    @on(OptionList.OptionSelected, "#message-picker")
    def _picked(self, event: OptionList.OptionSelected) -> None:
        if event.option.id is not None:
            self.dismiss(int(event.option.id))
