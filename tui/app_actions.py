"""The app's actions: conversations, the model, panes, screens, clipboard. Bound to
keys in :class:`tui.app.KvchatApp` and offered in the command palette
(:mod:`tui.commands`)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

from pydantic import ValidationError
from textual import events, on, work
from textual.app import App
from textual.containers import Vertical
from textual.timer import Timer
from textual.widgets import Input, TextArea

from engine.api import ChatEngine, ModelChoice
from engine.config import KvchatConfig
from engine.errors import KvchatError
from engine.events import Done, MemorySnapshot, ModelLoaded, RouteDecision
from engine.store import AttemptRow, MessageRow, Store
from tui.coalesce import pacing
from tui.live import LiveReply
from tui.messages import ModelSwitched, ModelSwitchFailed, ModelSwitching
from tui.notes import done_note, retry_note
from tui.prefs import SIDE_WIDTHS, UiPrefs, save_prefs
from tui.screens.conversations import ConversationsScreen, export_conversation
from tui.screens.help_screen import HelpScreen
from tui.screens.models_screen import ModelsScreen
from tui.screens.retry_screen import RetryScreen
from tui.screens.route_detail import RouteDetailScreen
from tui.ui_priority import streams_as_source
from tui.widgets.chat_pane import ChatPane
from tui.widgets.kv_pane import KVPane
from tui.widgets.memory_pane import MemoryPane
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
    config: KvchatConfig
    engine: ChatEngine
    store: Store
    prefs: UiPrefs
    prefs_file: Path
    conversation_id: int | None
    ready: bool
    replying: bool
    live: dict[int, LiveReply]
    source_view: bool
    next_route: str | None
    last_route: RouteDecision | None
    _engine_died: bool
    _switch_from: ModelLoaded | None = None
    """The model loaded when the switch in flight began."""
    _switch_ticker: Timer | None = None
    """Counts the seconds of the switch in flight on the status line."""
    # Provided by tui.app_tree and tui.app_find.
    add_rows: Callable[[Iterable[MessageRow]], Awaitable[None]]
    mark_tree: Callable[[], None]
    mark_context: Callable[[], None]
    leave_edit: Callable[[bool], None]
    show_state: Callable[..., None]

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
        """The conversation's path, each message marked with its versions and where
        it stands in the model's context (:mod:`tui.app_tree`, :mod:`tui.app_find`). A
        reply streaming in it shows its text so far and streams on; one streaming in the
        conversation that leaves the screen streams on unseen."""
        await self._leave_shown()
        await self.add_rows(self.store.messages(conversation_id))
        pane = self.query_one(ChatPane)
        for live in self.live.values():  # sent, but not stored yet
            if live.conversation_id == conversation_id and not live.turn_started:
                if live.prompt:
                    live.prompt_widget = await pane.add_user(live.prompt)
                await (self.attach_answers(live) if live.answers  # type: ignore[attr-defined]
                       else self.attach(live))  # type: ignore[attr-defined]
        self.mark_tree()
        self.mark_context()
        self.show_state()
        self.refresh_bindings()

    async def _leave_shown(self) -> None:
        """The conversation shown leaves the screen; its reply, if one streams, goes on."""
        for live in self.live.values():
            live.detach()
        await self.query_one(ChatPane).clear()

    async def action_new_conversation(self) -> None:
        self.conversation_id = None
        self.leave_edit(False)
        await self._leave_shown()
        if self.ready:
            self.show_state()
        self.refresh_bindings()
        self.notify("New conversation: the next message starts it.")

    @work(exclusive=True, group="screens")
    async def action_conversations(self) -> None:
        generating = {r.conversation_id for r in self.live.values()}
        choice = await self.push_screen_wait(
            ConversationsScreen(self.store, self.conversation_id, generating))
        if choice is None:
            return
        what, cid = choice
        if what == "open" and cid is not None:
            self.conversation_id = cid
            self.leave_edit(False)
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

    # -- the model ----------------------------------------------------------------------

    def use_model(self, info: ModelLoaded, memory: list[MemorySnapshot]) -> None:
        """The engine's model, loaded or switched to: ready for messages, in the status
        line and the panes."""
        self.ready = True
        self._engine_died = False
        self.source_view = streams_as_source(self.config, info)
        self.engine.pace_events(pacing(self.source_view).relay_gap_s)
        status = self.query_one(StatusLine)
        status.model_name = info.name
        status.backend = info.backend
        status.ctx_total = info.n_ctx
        status.state = "ready"
        self.query_one(KVPane).show_empty(info.n_ctx)
        pane = self.query_one(MemoryPane)
        pane.show_model(info)
        for snapshot in memory:
            pane.show_snapshot(snapshot)
        self.query_one(PromptInput).placeholder = \
            "Message (Enter sends, Ctrl+J new line, Esc cancels, F1 help)"

    def _can_switch(self) -> bool:
        # Refused rather than cancelling the reply: its text would be cut off unasked.
        if self.live:
            self.notify("A reply is streaming: Esc cancels it, then switch.",
                        title="Switch model", severity="warning")
            return False
        if any(w.group == "load" and w.is_running for w in self.workers):
            self.notify("A model is loading: switch once it is ready.",
                        title="Switch model", severity="warning")
            return False
        return True

    @work(exclusive=True, group="screens")
    async def action_switch_model(self) -> None:
        if not self._can_switch():
            return
        choice = await self.push_screen_wait(
            ModelsScreen(self.engine, list(self.config.models.dirs)))
        if choice is None or not self._can_switch():
            return
        self.ready = False  # no message goes to the model on its way out
        self._switch_from = self.engine.info
        self.switch_model(choice)

    @work(exclusive=True, group="load", exit_on_error=False)
    async def switch_model(self, choice: ModelChoice) -> None:
        self.post_message(ModelSwitching(choice.name, choice.reason))
        try:
            info = await self.engine.switch_model(choice.path)
        except KvchatError as exc:
            self.post_message(ModelSwitchFailed(exc.message, self.engine.info,
                                                self.engine.memory))
            return
        self.post_message(ModelSwitched(info, self.engine.memory))

    @on(ModelSwitching)
    def _model_switching(self, message: ModelSwitching) -> None:
        self.ready = False
        status = self.query_one(StatusLine)
        status.state = f"loading {message.name}…"
        started = time.monotonic()

        def tick() -> None:
            status.state = f"loading {message.name}… {time.monotonic() - started:.0f} s"

        self._switch_ticker = self.set_interval(1.0, tick)
        self.query_one(MemoryPane).reset(
            f"loading {message.name}: {message.plan}" if message.plan
            else f"loading {message.name}…")
        self.query_one(PromptInput).placeholder = f"Loading {message.name}…"

    def _switch_over(self) -> None:
        if self._switch_ticker is not None:
            self._switch_ticker.stop()
            self._switch_ticker = None

    def _fresh_model(self, info: ModelLoaded | None) -> None:
        """Status and KV pane for a model with an empty cache (None: no model)."""
        status = self.query_one(StatusLine)
        status.ctx_used = status.evicted = 0
        status.tokens_per_s = 0.0
        status.spec = status.route = ""
        self.query_one(KVPane).reset(info.n_ctx if info is not None else 0)

    @on(ModelSwitched)
    async def _model_switched(self, message: ModelSwitched) -> None:
        self._switch_over()
        info = message.info
        self._fresh_model(info)
        self.use_model(info, message.memory)
        await self.query_one(ChatPane).add_notice(
            f"model: {info.name} ({info.chat_format}), loaded in {info.load_s:.1f} s; "
            "the conversation goes on with it")
        self.notify(f"{info.name} is loaded; the next message is read whole by it.",
                    title="Switch model")

    @on(ModelSwitchFailed)
    def _model_switch_failed(self, message: ModelSwitchFailed) -> None:
        self._switch_over()
        self.notify(message.message, title="Switch model failed", severity="error",
                    timeout=30)
        info = message.info
        if info is None:
            self.ready = False
            self._fresh_model(None)
            self.query_one(MemoryPane).reset("no model loaded")
            status = self.query_one(StatusLine)
            status.model_name = status.backend = ""
            status.ctx_total = 0
            status.state = "no model loaded: Ctrl+P, Switch model"
            self.query_one(PromptInput).placeholder = \
                "No model is loaded: Ctrl+P, Switch model loads one"
            return
        if info != self._switch_from:  # the previous model, loaded again: an empty cache
            self._fresh_model(info)
        self.use_model(info, message.memory)

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
