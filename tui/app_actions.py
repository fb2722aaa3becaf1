"""The app's actions: conversations, panes, screens, clipboard. Bound to keys in
:class:`tui.app.KvchatApp` and offered in the command palette (:mod:`tui.commands`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError
from textual import events, work
from textual.app import App
from textual.containers import Vertical
from textual.widgets import Input, TextArea

from engine.errors import KvchatError
from engine.events import Done, RouteDecision
from engine.store import AttemptRow, MessageRow, Store
from tui.notes import done_note, retry_note
from tui.prefs import SIDE_WIDTHS, UiPrefs, save_prefs
from tui.screens.conversations import ConversationsScreen, export_conversation
from tui.screens.help_screen import HelpScreen
from tui.screens.retry_screen import RetryScreen
from tui.screens.route_detail import RouteDetailScreen
from tui.widgets.chat_pane import ChatPane, ReplyMessage
from tui.widgets.prompt_input import PromptInput
from tui.widgets.reply_blocks import CodeFence, code_blocks
from tui.widgets.status_line import StatusLine

PANES = ("memory", "kv")


def stored_note(row: MessageRow, attempts: list[AttemptRow]) -> str:
    """The stats line of a stored reply, rebuilt from what the session saved."""
    stats = dict(row.stats or {})
    route = stats.pop("route", None)
    prefix = f"route {route} · " if route else ""
    strategies = [a.strategy for a in attempts[1:]]
    try:
        done = Done(text=row.content, **stats)
    except (ValidationError, TypeError):
        parts = [] if row.status == "complete" else [row.status]
        if attempts:
            parts.append(retry_note(len(attempts), attempts[-1].ok, strategies))
        return prefix + " · ".join(p for p in parts if p)
    return prefix + done_note(done, strategies)


class AppActions(App[int]):
    store: Store
    prefs: UiPrefs
    prefs_file: Path
    conversation_id: int | None
    replying: bool
    next_route: str | None
    last_route: RouteDecision | None

    def on_key(self, event: events.Key) -> None:
        """Typing while the conversation or a pane has the focus (after Tab, a click or
        a scroll) goes to the message box, as in a chat app, instead of nowhere."""
        if not event.is_printable or not event.character or len(self.screen_stack) > 1:
            return
        if isinstance(self.focused, Input | TextArea):
            return
        prompt = self.query_one(PromptInput)
        if prompt.disabled:
            return
        event.stop()
        prompt.focus()
        prompt.insert(event.character)

    def action_scroll_chat(self, how: str) -> None:
        """PageUp/PageDown in the message box scroll the conversation."""
        pane = self.query_one(ChatPane)
        if how == "page_up":
            pane.action_page_up()
        elif how == "page_down":
            pane.action_page_down()

    # -- conversations ----------------------------------------------------------------

    async def show_history(self, conversation_id: int) -> None:
        pane = self.query_one(ChatPane)
        await pane.clear()
        for row in self.store.messages(conversation_id):
            if row.role == "user":
                await pane.add_user(row.content)
            elif row.role == "assistant":
                attempts = self.store.attempts(row.id)
                reply = await pane.add_reply(row.content, stored_note(row, attempts), row.id)
                await self._fold_attempts(reply, attempts)

    async def _fold_attempts(self, reply: ReplyMessage, attempts: list[AttemptRow]) -> None:
        for attempt in attempts[:-1]:
            await reply.add_folded(attempt.number, attempt.strategy,
                                   attempt.errors[0] if attempt.errors else "",
                                   attempt.content)
        reply.strategies = [a.strategy for a in attempts[1:]]

    async def action_new_conversation(self) -> None:
        if self.replying:
            self.notify("A reply is in flight: Esc cancels it.", severity="warning")
            return
        self.conversation_id = None
        await self.query_one(ChatPane).clear()
        self.notify("New conversation: the next message starts it.")

    @work(exclusive=True, group="screens")
    async def action_conversations(self) -> None:
        if self.replying:
            self.notify("A reply is in flight: Esc cancels it.", severity="warning")
            return
        choice = await self.push_screen_wait(
            ConversationsScreen(self.store, self.conversation_id))
        if choice is None:
            return
        what, cid = choice
        if what == "open" and cid is not None:
            self.conversation_id = cid
            await self.show_history(cid)
        elif what in ("new", "deleted"):
            await self.action_new_conversation()

    def action_export(self, fmt: str) -> None:
        if self.conversation_id is None:
            self.notify("Nothing to export yet.", severity="warning")
            return
        try:
            path = export_conversation(self.store, self.conversation_id, fmt)
        except (OSError, KvchatError) as exc:
            self.notify(str(exc), title="Export failed", severity="error")
            return
        self.notify(str(path), title="Exported")

    # -- screens ------------------------------------------------------------------------

    def action_retries(self) -> None:
        last = self.query_one(ChatPane).last_reply()
        self.push_screen(RetryScreen(self.store, last.message_id if last else None))

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_route_detail(self) -> None:
        self.push_screen(RouteDetailScreen(self.last_route))

    def action_next_route(self, name: str) -> None:
        self.next_route = name or None
        self.query_one(StatusLine).next_route = name
        self.notify(f"The next message goes through route {name}." if name
                    else "The router chooses again.")

    # -- clipboard ----------------------------------------------------------------------

    def action_copy_reply(self) -> None:
        last = self.query_one(ChatPane).last_reply()
        if last is None or not last.text:
            self.notify("No reply to copy yet.", severity="warning")
            return
        self.copy_to_clipboard(last.text)
        self.notify(f"Copied the last reply ({len(last.text)} characters).")

    def last_code_blocks(self) -> list[CodeFence]:
        """The code blocks of the last reply, in order."""
        last = self.query_one(ChatPane).last_reply()
        return code_blocks(last.text) if last is not None else []

    def action_copy_code(self, number: int = 0) -> None:
        """Copy code block ``number`` (from 1) of the last reply; 0: its last one."""
        blocks = self.last_code_blocks()
        if not blocks:
            self.notify("The last reply has no code block.", severity="warning")
            return
        if not 0 <= number <= len(blocks):
            self.notify(f"The last reply has {len(blocks)} code blocks, not {number}.",
                        severity="warning")
            return
        block = blocks[number - 1 if number else -1]
        self.copy_to_clipboard(block.code)
        which = f"code block {number or len(blocks)} of {len(blocks)}"
        language = f", {block.language}" if block.language else ""
        self.notify(f"Copied {which} ({len(block.code.splitlines())} lines{language}).")

    # -- panes --------------------------------------------------------------------------

    def apply_pane_prefs(self) -> None:
        side = self.query_one("#side", Vertical)
        for name in PANES:
            self.query_one(f"#{name}").set_class(not getattr(self.prefs, f"{name}_pane"),
                                                 "-hidden")
        side.set_class(not (self.prefs.memory_pane or self.prefs.kv_pane), "-empty")
        side.set_class(self.prefs.memory_pane != self.prefs.kv_pane, "-solo")
        for width in SIDE_WIDTHS:
            side.set_class(width == self.prefs.side_width, f"-side-{width}")

    def action_toggle_pane(self, name: str) -> None:
        side = self.query_one("#side", Vertical)
        field = f"{name}_pane"
        # On a small screen the first toggle asks for the pane rather than hiding it.
        auto_hidden = side.has_class("-auto") and not side.display
        side.remove_class("-auto")
        setattr(self.prefs, field, True if auto_hidden else not getattr(self.prefs, field))
        self.apply_pane_prefs()
        save_prefs(self.prefs, self.prefs_file)

    def action_resize_side(self) -> None:
        i = SIDE_WIDTHS.index(self.prefs.side_width)
        self.prefs.side_width = SIDE_WIDTHS[(i + 1) % len(SIDE_WIDTHS)]
        self.apply_pane_prefs()
        save_prefs(self.prefs, self.prefs_file)
