"""The context map: the conversation message by message, and what the model still has
of each (in the cache, restored from a saved state, partly or wholly evicted and by
which eviction, cut to fit). Built from the engine's last ``context`` event for this
conversation (:mod:`tui.context_view`); Enter goes to the message in the chat pane."""

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

from tui.context_view import MessageContext

BAR = 16
"""Cells of each message's bar."""
CELLS = (("█", "$accent", "in the cache"), ("▓", "$success", "restored from a saved state"),
         ("░", "$warning", "evicted"), ("·", "$text-muted", "not read yet"))


def bar_cells(found: MessageContext, width: int = BAR) -> list[int]:
    """How many of ``width`` cells each of CELLS takes: evicted first (the window drops
    a message's oldest tokens first), then restored, then the rest of the cache."""
    if found.tokens <= 0:
        return [0, 0, 0, width]
    share = [found.cached - found.restored, found.restored, found.evicted_tokens]
    cells = [round(n * width / found.tokens) for n in share]
    for i, n in enumerate(share):  # a few tokens still show
        if n and not cells[i]:
            cells[i] = 1
    while sum(cells) > width:
        cells[cells.index(max(cells))] -= 1
    return [*cells, width - sum(cells)]


def row_label(found: MessageContext) -> Content:
    counts = bar_cells(found)
    order = (2, 1, 0, 3)  # evicted, restored, cached, not read
    bar: list[tuple[str, str]] = [(CELLS[i][0] * counts[i], CELLS[i][1])
                                  for i in order if counts[i]]
    name = f"#{found.message_id}" if found.message_id is not None else "system prompt"
    head = f"{name} {found.role}" if found.message_id is not None else name
    parts: list[str | tuple[str, str]] = [(f"{head:<18.18} ", "bold"), *bar,
                                          f"  {found.describe()}"]
    if found.preview:
        parts.append((f"\n{' ' * 19}{found.preview}", "$text-muted"))
    return Content.assemble(*parts)


def legend() -> Content:
    parts: list[str | tuple[str, str]] = []
    for cell, style, meaning in CELLS:
        parts += [(cell * 2, style), f" {meaning}   "]
    return Content.assemble(*parts)


class ContextMapScreen(ModalScreen[int | None]):
    """Enter gives the highlighted message's id (None for the system prompt); Esc
    gives None."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,f8", "dismiss(None)", "Close")]

    def __init__(self, rows: Sequence[MessageContext], summary: str, note: str = "") -> None:
        super().__init__(classes="dialog")
        self.rows = list(rows)
        self.summary = summary
        self.note = note

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-box", id="context-map"):
            yield Static(self.summary, id="context-summary", markup=False)
            if self.note:
                yield Static(self.note, id="context-note", markup=False)
            yield Static(legend(), id="context-legend")
            yield OptionList(*[Option(row_label(r), id=str(i), disabled=r.message_id is None)
                               for i, r in enumerate(self.rows)], id="context-rows")

    def on_mount(self) -> None:
        self.query_one("#context-rows", OptionList).focus()

    @on(OptionList.OptionSelected, "#context-rows")
    def _go(self, event: OptionList.OptionSelected) -> None:
        if event.option.id is not None:
            self.dismiss(self.rows[int(event.option.id)].message_id)
