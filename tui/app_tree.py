"""The conversation as a tree in the app: regenerate the last reply, edit an earlier
message, switch between a message's versions, branch into a new conversation. Mixed
into :class:`tui.app.KvchatApp`; the reply itself streams through the same chain as
a sent message (:mod:`tui.app_replies`), from ``ChatSession.regenerate`` or ``edit``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

from textual import on, work
from textual.app import App

from engine.config import KvchatConfig
from engine.errors import KvchatError
from engine.events import Event
from engine.session import ChatSession
from engine.store import MessageRow, Store
from tui.app_actions import stored_note
from tui.live import Branch, LiveReply
from tui.messages import ReplyFailed, ReplyFinished
from tui.screens.message_picker import MessagePicker
from tui.widgets.chat_pane import ChatPane, ReplyMessage, UserMessage
from tui.widgets.prompt_input import PromptInput

Shown = UserMessage | ReplyMessage


def version_mark(index: int, count: int) -> str:
    """``‹ 2/3 ›`` for the second of three versions; empty for a message with none."""
    return f"‹ {index + 1}/{count} ›" if count > 1 else ""


class TreeActions(App[int]):
    config: KvchatConfig
    store: Store
    session: ChatSession
    conversation_id: int | None
    ready: bool
    replying: bool
    pinned: frozenset[str]
    ignore_eos: bool
    source_view: bool
    live: dict[int, LiveReply]
    editing: int | None = None
    """The user message whose new version the message box holds."""
    _draft = ""
    """What the message box held before an edit took it."""
    # Provided by the app's other parts.
    show_history: Callable[[int], Awaitable[None]]
    _open_reply: Callable[[LiveReply, str | None], Awaitable[None]]
    _start_reply: Callable[[LiveReply, str | None], None]
    attach: Callable[[LiveReply], Awaitable[None]]
    attach_answers: Callable[[LiveReply], Awaitable[None]]
    show_state: Callable[..., None]
    mark_context: Callable[[], None]

    # -- the messages on screen -------------------------------------------------------

    def shown_messages(self) -> list[Shown]:
        pane = self.query_one(ChatPane)
        return [w for w in pane.children if isinstance(w, UserMessage | ReplyMessage)]

    def shown(self, message_id: int | None) -> Shown | None:
        return next((w for w in self.shown_messages() if w.message_id == message_id), None)

    def focused_message(self) -> Shown | None:
        """The message with the keyboard focus on the main screen (kept while the
        command palette is open)."""
        focused = self.query_one(ChatPane).screen.focused
        return focused if isinstance(focused, UserMessage | ReplyMessage) else None

    def action_focus_message(self, step: int) -> None:
        """Alt+Up / Alt+Down: the focus to the message before or after; from the message
        box, Alt+Up goes to the last one, and past the last the box takes it again."""
        shown = self.shown_messages()
        current = self.focused_message()
        if current in shown:
            i = shown.index(current) + step
        else:
            i = len(shown) - 1 if step < 0 else len(shown)
        if 0 <= i < len(shown):
            shown[i].focus()
        else:
            self.query_one(PromptInput).focus()

    async def add_rows(self, rows: Iterable[MessageRow]) -> None:
        """Stored messages at the end of the pane, each reply with its folded attempts;
        a reply still streaming shows its text so far and streams on there."""
        pane = self.query_one(ChatPane)
        streaming = {rid: live for live in self.live.values() for rid in live.reply_ids}
        for row in rows:
            live = streaming.get(row.id)
            if live is not None:
                await (self.attach_answers(live) if live.answers else self.attach(live))
            elif row.role == "user":
                await pane.add_user(row.content, row.id)
            elif row.role == "assistant":
                attempts = self.store.attempts(row.id)
                reply = await pane.add_reply(row.content, stored_note(row, attempts), row.id)
                for attempt in attempts[:-1]:
                    await reply.add_folded(attempt.number, attempt.strategy,
                                           attempt.errors[0] if attempt.errors else "",
                                           attempt.content)
                reply.strategies = [a.strategy for a in attempts[1:]]

    async def cut_from(self, message_id: int, keep: bool = False) -> bool:
        """Take the message ``message_id`` (kept with ``keep``) and all below it off the
        pane; False if it is not on it."""
        widget = self.shown(message_id)
        if widget is None:
            return False
        pane = self.query_one(ChatPane)
        children = list(pane.children)
        start = children.index(widget) + (1 if keep else 0)
        await pane.remove_children(children[start:])
        return True

    def mark_tree(self) -> None:
        """Each message's place among its versions (``‹ 2/3 ›``); an edit whose message
        has left the pane is over."""
        if self.editing is not None and self.shown(self.editing) is None:
            self.leave_edit(restore=False)
        for widget in self.shown_messages():
            if widget.message_id is None:
                continue
            try:
                siblings, index = self.store.siblings(widget.message_id)
            except KvchatError:
                continue
            widget.set_mark(version_mark(index, len(siblings)))

    def _may_branch(self, what: str) -> bool:
        if not self.ready:
            self.notify("The model is still loading.", title=what, severity="warning")
            return False
        if self.replying:
            self.notify("A reply is in flight: Esc cancels it.", title=what,
                        severity="warning")
            return False
        if self.conversation_id is None:
            self.notify("Nothing to answer yet: send a message first.", title=what,
                        severity="warning")
            return False
        return True

    # -- regenerate and edit ----------------------------------------------------------

    async def action_regenerate(self) -> None:
        """Ctrl+G: a new reply to the last message, beside the one shown."""
        if not self._may_branch("Regenerate"):
            return
        assert self.conversation_id is not None
        try:
            user = self.store.to_answer_again(self.conversation_id)
        except KvchatError as exc:
            self.notify(exc.message, title="Regenerate", severity="warning")
            return
        if not await self.cut_from(user.id, keep=True):
            await self.show_history(self.conversation_id)
            await self.cut_from(user.id, keep=True)
        await self.start_tree_turn(("regenerate", self.conversation_id), None)

    async def start_tree_turn(self, branch: Branch, text: str | None) -> None:
        """Open the reply of an edit (``text``) or a regeneration (None) and start it."""
        live = LiveReply(self.conversation_id, text or "", branch=branch)
        self.live[live.key] = live
        await self._open_reply(live, text)
        self.show_state()
        self.refresh_bindings()
        self.call_after_refresh(self._start_reply, live, None)

    def reply_stream(self, live: LiveReply, route: str | None) -> AsyncIterator[Event]:
        """The events of a sent message, an edit or a regeneration, in the conversation
        it was sent in (whichever is shown by then)."""
        options = {"pinned": self.pinned, "ignore_eos": self.ignore_eos,
                   "cancel": live.cancel}
        sampling = self.config.sampling
        if live.branch is None:
            return self.session.send(live.prompt, live.conversation_id, sampling, route=route,
                                     **options)
        what, target = live.branch
        if what == "edit":
            return self.session.edit(target, live.prompt, sampling, route=route, **options)
        return self.session.regenerate(target, sampling, **options)

    @work(exclusive=True, group="screens")
    async def action_edit_message(self, message_id: int = 0) -> None:
        """Enter on a message (or the palette's list): its text into the message box,
        to be sent as a new version of it."""
        if not message_id:
            focused = self.focused_message()
            if isinstance(focused, UserMessage) and focused.message_id is not None:
                message_id = focused.message_id
            elif (picked := await self._pick_user_message()) is not None:
                message_id = picked
            else:
                return
        if self.replying:
            self.notify("A reply is in flight: Esc cancels it.", severity="warning")
            return
        try:
            row = self.store.editable(message_id, self.conversation_id)
        except KvchatError as exc:
            self.notify(exc.message, title="Edit", severity="warning")
            return
        prompt = self.query_one(PromptInput)
        if self.editing is None:
            self._draft = prompt.text
        prompt.text = row.content
        prompt.move_cursor(prompt.document.end)
        self._edit_mode(message_id)
        prompt.focus()

    def _edit_mode(self, message_id: int) -> None:
        self.editing = message_id
        prompt = self.query_one(PromptInput)
        prompt.border_title = f"editing message {message_id}: Enter sends it, Esc leaves"
        prompt.add_class("-editing")

    async def open_edit(self, message_id: int) -> Branch:
        """The edit just sent: its message and all below leave the pane for the new
        version and its reply."""
        await self.cut_from(message_id)
        return ("edit", message_id)

    async def _pick_user_message(self) -> int | None:
        if self.conversation_id is None:
            self.notify("No conversation yet.", title="Edit", severity="warning")
            return None
        rows = [r for r in self.store.messages(self.conversation_id) if r.role == "user"]
        if not rows:
            self.notify("No message of yours to edit yet.", title="Edit",
                        severity="warning")
            return None
        return await self.push_screen_wait(MessagePicker("Edit which message?", rows))

    def take_edit(self) -> int | None:
        """The message being edited, for the text just sent; edit mode ends."""
        editing = self.editing
        self.leave_edit(restore=False)
        return editing if editing is not None and self.shown(editing) is not None else None

    def leave_edit(self, restore: bool) -> None:
        """Out of edit mode; with ``restore`` the message box gets its draft back."""
        prompt = self.query_one(PromptInput)
        if restore and self.editing is not None:
            prompt.text = self._draft
            prompt.move_cursor(prompt.document.end)
        self.editing = None
        self._draft = ""
        prompt.border_title = None
        prompt.remove_class("-editing")

    @on(ReplyFinished)
    @on(ReplyFailed)
    async def _tree_turn_over(self, message: ReplyFinished | ReplyFailed) -> None:
        """After an edit or a regeneration: the versions' marks; after one that failed
        before it was stored, the conversation as it was."""
        live = message.live
        branch = live.branch if live is not None else None
        if (branch is None or live is None or self.conversation_id is None
                or live.conversation_id != self.conversation_id or not self.query(ChatPane)):
            return  # not a branch, or its conversation is not the one shown
        if isinstance(message, ReplyFailed) and not live.turn_started:
            await self.show_history(self.conversation_id)
            if branch[0] == "edit":  # its text is back in the box: still an edit
                self._edit_mode(branch[1])
        self.mark_tree()

    # -- versions and branches ----------------------------------------------------------

    async def action_sibling(self, step: int) -> None:
        """Alt+Left / Alt+Right: the focused message's previous or next version (the
        last reply's when no message has the focus), and the path below it."""
        if self.replying:
            self.notify("A reply is in flight: Esc cancels it.", severity="warning")
            return
        widget = self.focused_message() or self.query_one(ChatPane).last_reply()
        if widget is None or widget.message_id is None or self.conversation_id is None:
            self.notify("No message to switch.", severity="warning")
            return
        siblings, index = self.store.siblings(widget.message_id)
        if len(siblings) < 2:
            self.notify("This message has no other version.")
            return
        target = siblings[(index + step) % len(siblings)]
        had_focus = widget is self.focused_message()
        await self.show_version(target.id)
        shown = self.shown(target.id)
        if shown is not None and had_focus:
            shown.focus()

    async def show_version(self, message_id: int) -> None:
        """Show the path through ``message_id``: the pane is redrawn from the fork."""
        assert self.conversation_id is not None
        self.store.set_active(self.conversation_id, message_id)
        path = [r for r in self.store.messages(self.conversation_id)
                if r.role in ("user", "assistant")]
        ids = [r.id for r in path]
        shown = [w.message_id for w in self.shown_messages()]
        fork = next((i for i, (a, b) in enumerate(zip(ids, shown, strict=False)) if a != b),
                    min(len(ids), len(shown)))
        if fork < len(shown) and shown[fork] is not None:
            await self.cut_from(shown[fork])  # type: ignore[arg-type]
        elif fork < len(shown):
            await self.show_history(self.conversation_id)
            return
        await self.add_rows(path[fork:])
        self.mark_tree()
        self.mark_context()

    async def action_branch(self, message_id: int = 0) -> None:
        """A new conversation holding the path down to the focused message (the last
        one when none has the focus), opened."""
        if self.replying:
            self.notify("A reply is in flight: Esc cancels it.", severity="warning")
            return
        if not message_id:
            shown = self.focused_message() or next(reversed(self.shown_messages()), None)
            message_id = shown.message_id if shown is not None and shown.message_id else 0
        if not message_id:
            self.notify("Nothing to branch from yet.", title="Branch", severity="warning")
            return
        try:
            cid = self.store.branch_from(message_id)
        except KvchatError as exc:
            self.notify(exc.message, title="Branch", severity="warning")
            return
        self.conversation_id = cid
        await self.show_history(cid)
        title = self.store.get_conversation(cid).title
        self.notify(f"#{cid} {title}", title="Branched into a new conversation")
