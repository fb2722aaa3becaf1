"""The stored conversations: switch, start, rename, delete, export."""

from __future__ import annotations

import json
import time
from collections.abc import Collection
from pathlib import Path
from typing import ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Footer, OptionList, Static
from textual.widgets.option_list import Option

from engine.errors import KvchatError
from engine.files.atomic import atomic_write, private_dir
from engine.store import ConversationRow, Store, default_data_dir
from tui.safe_text import one_line
from tui.screens.dialogs import AskText, Confirm

Choice = tuple[str, int | None]
"""("open", id), ("new", None), or ("deleted", id) for the conversation on screen."""


def conversation_label(row: ConversationRow, current: int | None,
                       generating: bool = False) -> Content:
    """One row, the title as plain text (a title is the user's text: no markup)."""
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(row.updated_at))
    mark = "▶ " if row.id == current else "  "
    live = " · generating" if generating else ""
    return Content(f"{mark}#{row.id} {one_line(row.title)} · {row.message_count} messages"
                   f" · {when}{live}")


def export_conversation(store: Store, cid: int, fmt: str, folder: Path | None = None) -> Path:
    """Writes the conversation as Markdown or JSON into the data dir's exports/."""
    folder = private_dir(folder or default_data_dir() / "exports")
    path = folder / f"conversation-{cid}.{fmt}"
    if fmt == "md":
        atomic_write(path, store.export_markdown(cid))
    else:
        atomic_write(path, json.dumps(store.export_json(cid), indent=2, ensure_ascii=False)
                     + "\n")
    return path


class ConversationsScreen(ModalScreen[Choice | None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "dismiss(None)", "Close"),
        Binding("n", "new", "New"),
        Binding("r", "rename", "Rename"),
        Binding("d", "delete", "Delete"),
        Binding("m", "export('md')", "Export .md"),
        Binding("j", "export('json')", "Export .json"),
    ]

    def __init__(self, store: Store, current: int | None,
                 generating: Collection[int | None] = ()) -> None:
        super().__init__(classes="dialog")
        self.store = store
        self.current = current
        self.generating = generating
        """Conversations with a reply streaming now."""
        self.deleted_current = False

    def compose(self) -> ComposeResult:
        yield Static("Conversations — Enter opens", id="conversations-title")
        yield OptionList(id="conversations")
        yield Footer()

    def on_mount(self) -> None:
        self.reload()

    def reload(self) -> None:
        options = self.query_one("#conversations", OptionList)
        keep = options.highlighted
        options.clear_options()
        rows = self.store.list_conversations()
        if not rows:
            options.add_option(Option("No conversations yet: n starts one.", disabled=True))
            return
        options.add_options([Option(conversation_label(r, self.current,
                                                       r.id in self.generating), id=str(r.id))
                             for r in rows])
        options.highlighted = min(keep or 0, len(rows) - 1)
        options.focus()

    @property
    def highlighted_id(self) -> int | None:
        options = self.query_one("#conversations", OptionList)
        if options.highlighted is None:
            return None
        option = options.get_option_at_index(options.highlighted)
        return int(option.id) if option.id is not None else None

    @on(OptionList.OptionSelected, "#conversations")
    def _open(self, event: OptionList.OptionSelected) -> None:
        if event.option.id is not None:
            self.dismiss(("open", int(event.option.id)))

    def action_new(self) -> None:
        self.dismiss(("new", None))

    @work(exclusive=True, group="conversation-edit")
    async def action_rename(self) -> None:
        cid = self.highlighted_id
        if cid is None:
            return
        title = await self.app.push_screen_wait(
            AskText("New title:", one_line(self.store.get_conversation(cid).title)))
        if title:
            self.store.rename_conversation(cid, title)
            self.reload()

    @work(exclusive=True, group="conversation-edit")
    async def action_delete(self) -> None:
        cid = self.highlighted_id
        if cid is None:
            return
        title = one_line(self.store.get_conversation(cid).title)
        if await self.app.push_screen_wait(Confirm(f"Delete #{cid} “{title}”?")):
            self.store.delete_conversation(cid)
            if cid == self.current:
                self.dismiss(("deleted", cid))
                return
            self.reload()

    def action_export(self, fmt: str) -> None:
        cid = self.highlighted_id
        if cid is None:
            return
        try:
            path = export_conversation(self.store, cid, fmt)
        except (OSError, KvchatError) as exc:
            self.notify(str(exc), title="Export failed", severity="error")
            return
        self.notify(str(path), title="Exported")
