"""Search every stored conversation: a query, and the messages and titles that match it,
best first, each with its conversation, its role and the match highlighted. Enter opens
the hit in its conversation. The store is searched in a thread worker, which only posts
its results; a result for a query no longer typed is dropped."""

from __future__ import annotations

from typing import ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.content import Content
from textual.message import Message
from textual.screen import ModalScreen
from textual.timer import Timer
from textual.widgets import Input, OptionList, Static
from textual.widgets.option_list import Option

from engine.errors import KvchatError
from engine.store import SearchHit, Store
from tui.safe_text import one_line

LIMIT = 50
TYPING_S = 0.15
"""The query is searched once typing pauses this long."""
MARKS = ("\x02", "\x03")
"""Control characters around each match: every other one is escaped in the text first,
so only these become highlighting."""
IDLE = "Words to find in every conversation: messages on any branch, and titles."


def hit_label(hit: SearchHit) -> Content:
    """``#3 Title · assistant, message 12`` over the snippet, its matches highlighted."""
    where = "title" if hit.message_id is None else f"{hit.role}, message {hit.message_id}"
    parts: list[str | tuple[str, str]] = [(f"#{hit.conversation_id} ", "$text-muted"),
                                          (clean(hit.conversation_title), "bold"),
                                          (f" · {where}\n", "$text-muted")]
    snippet = clean(hit.snippet)
    marked = False
    for piece in snippet.replace(MARKS[1], MARKS[0]).split(MARKS[0]):
        if piece:
            parts.append((piece, "bold $text-accent underline") if marked else piece)
        marked = not marked
    return Content.assemble(*parts)


def clean(text: str) -> str:
    """One line, what a terminal would act on escaped, the match marks kept."""
    return one_line(text, keep="".join(MARKS))


class SearchResults(Message):
    """The worker's answer for ``query``: its hits, or the one-line reason there are none."""

    def __init__(self, query: str, hits: list[SearchHit], error: str = "") -> None:
        super().__init__()
        self.query = query
        self.hits = hits
        self.error = error


class SearchScreen(ModalScreen[SearchHit | None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "dismiss(None)", "Close"),
        Binding("down", "to_hits", "Hits", show=False),
    ]

    def __init__(self, store: Store, query: str = "") -> None:
        super().__init__(classes="dialog")
        self.store = store
        self.query_text = query
        self.hits: list[SearchHit] = []
        self._typing: Timer | None = None

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-box", id="search-box"):
            yield Input(self.query_text, placeholder="Search conversations", id="search-query")
            yield Static(IDLE, id="search-status", markup=False)
            yield OptionList(id="search-hits")

    def on_mount(self) -> None:
        self.query_one("#search-query", Input).focus()
        if self.query_text.strip():
            self.run_search(self.query_text)

    @on(Input.Changed, "#search-query")
    def _typed(self, event: Input.Changed) -> None:
        if self._typing is not None:
            self._typing.stop()
        query = event.value
        if not query.strip():
            self._show(SearchResults(query, []), IDLE)
            return
        self._typing = self.set_timer(TYPING_S, lambda: self.run_search(query))

    @work(thread=True, exclusive=True, group="search")
    def run_search(self, query: str) -> None:
        try:
            hits = self.store.search(query, LIMIT, marks=MARKS)
        except KvchatError as exc:
            self.post_message(SearchResults(query, [], exc.message))
            return
        self.post_message(SearchResults(query, hits))

    @on(SearchResults)
    def _results(self, message: SearchResults) -> None:
        if message.query != self.query_one("#search-query", Input).value:
            return  # typed on since
        count = len(message.hits)
        status = message.error or (f"{count} hit{'s' if count != 1 else ''}"
                                   f"{' (the first ' + str(LIMIT) + ')' if count >= LIMIT else ''}"
                                   " · Enter opens" if count else "Nothing matches.")
        self._show(message, status)

    def _show(self, message: SearchResults, status: str) -> None:
        self.hits = message.hits
        self.query_one("#search-status", Static).update(status)
        hits = self.query_one("#search-hits", OptionList)
        hits.clear_options()
        hits.add_options([Option(hit_label(h), id=str(i)) for i, h in enumerate(self.hits)])
        hits.highlighted = 0 if self.hits else None

    def action_to_hits(self) -> None:
        if self.hits:
            self.query_one("#search-hits", OptionList).focus()

    @on(Input.Submitted, "#search-query")
    def _open_highlighted(self) -> None:
        highlighted = self.query_one("#search-hits", OptionList).highlighted
        if self.hits:
            self.dismiss(self.hits[highlighted or 0])

    @on(OptionList.OptionSelected, "#search-hits")
    def _open(self, event: OptionList.OptionSelected) -> None:
        if event.option.id is not None:
            self.dismiss(self.hits[int(event.option.id)])
