"""Review retried structured replies: the list, and one reply's attempts in sequence or
side by side, each with its error, its strategy and a diff against the one before."""

from __future__ import annotations

import difflib
from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.screen import Screen
from textual.widgets import Footer, OptionList, Static
from textual.widgets.option_list import Option

from engine.store import AttemptRow, RetriedReply, Store
from tui.notes import strategy_name
from tui.safe_text import one_line, visible


def reply_label(reply: RetriedReply) -> Content:
    verdict = "ok" if reply.ok else "FAILED"
    strategies = ", ".join(strategy_name(s) for s in reply.strategies)
    prompt = one_line(reply.prompt)[:60]
    return Content(f"#{reply.message_id} {verdict} · {reply.attempts} attempts ({strategies})"
                   f" · {prompt}")


def attempt_diff(before: str, after: str) -> list[str]:
    return list(difflib.unified_diff(before.splitlines(), after.splitlines(),
                                     "previous", "this", lineterm="", n=1))


class DiffView(Static):
    COMPONENT_CLASSES: ClassVar[set[str]] = {"diff--add", "diff--remove", "diff--hunk"}

    def __init__(self, lines: list[str]) -> None:
        super().__init__(classes="attempt-diff")
        self.lines = lines

    def on_mount(self) -> None:
        text = Text()
        for line in self.lines:
            style = ("diff--hunk" if line.startswith(("@@", "---", "+++"))
                     else "diff--add" if line.startswith("+")
                     else "diff--remove" if line.startswith("-") else None)
            text.append(visible(line) + "\n",
                        self.get_component_rich_style(style) if style else "")
        self.update(text if self.lines else "(no change in text)")


class AttemptView(Vertical):
    def __init__(self, row: AttemptRow, previous: AttemptRow | None) -> None:
        super().__init__(classes="attempt-view " + ("-ok" if row.ok else "-failed"))
        self.row = row
        self.previous = previous

    def compose(self) -> ComposeResult:
        row = self.row
        verdict = "passed" if row.ok else row.cut_off_note or "malformed"
        yield Static(f"attempt {row.number} · {strategy_name(row.strategy)} · {verdict} · "
                     f"{row.completion_tokens} tokens · {row.elapsed_s:.2f} s",
                     classes="attempt-head", markup=False)
        if row.found:
            yield Static(f"found: {visible(row.found)}", classes="attempt-found", markup=False)
        for error in row.errors:
            yield Static(f"error: {visible(error)}", classes="attempt-error", markup=False)
        if row.prompt_change:
            yield Static(f"prompt added: {visible(row.prompt_change)}",
                         classes="attempt-prompt", markup=False)
        yield Static(visible(row.content) or "(no text)", classes="attempt-text", markup=False)
        if self.previous is not None:
            yield Static(f"diff against attempt {self.previous.number}",
                         classes="attempt-head", markup=False)
            yield DiffView(attempt_diff(self.previous.content, row.content))


class RetryScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("s", "side_by_side", "Side by side / in sequence"),
        Binding("r", "reload", "Reload"),
    ]

    def __init__(self, store: Store, message_id: int | None = None) -> None:
        super().__init__()
        self.store = store
        self.selected = message_id
        self.replies: list[RetriedReply] = []

    def compose(self) -> ComposeResult:
        with Horizontal(id="retry-body"):
            yield OptionList(id="retry-list")
            yield VerticalScroll(id="retry-attempts")
        yield Footer()

    def on_mount(self) -> None:
        self.action_reload()

    def action_reload(self) -> None:
        self.replies = self.store.retried_replies(limit=200)
        options = self.query_one("#retry-list", OptionList)
        options.clear_options()
        if not self.replies:
            options.add_option(Option("No retried replies yet.", disabled=True))
            return
        options.add_options([Option(reply_label(r), id=str(r.message_id))
                             for r in self.replies])
        ids = [r.message_id for r in self.replies]
        index = ids.index(self.selected) if self.selected in ids else 0
        options.highlighted = index
        options.focus()

    @on(OptionList.OptionHighlighted, "#retry-list")
    async def _show(self, event: OptionList.OptionHighlighted) -> None:
        if event.option.id is not None:
            await self.show_reply(int(event.option.id))

    async def show_reply(self, message_id: int) -> None:
        self.selected = message_id
        rows = self.store.attempts(message_id)
        pane = self.query_one("#retry-attempts", VerticalScroll)
        await pane.remove_children()
        await pane.mount_all(AttemptView(row, rows[i - 1] if i else None)
                             for i, row in enumerate(rows))
        pane.scroll_home(animate=False)

    def action_side_by_side(self) -> None:
        self.query_one("#retry-attempts").toggle_class("-side-by-side")
