"""Finding things in the app: search over every conversation, and the context map
(which messages the model still has). Mixed into :class:`tui.app.KvchatApp`.

The engine's ``context`` event comes with a turn; its spans are matched to the stored
messages here, kept for the conversation it belongs to, and shown twice: the chat pane
marks the messages the model no longer has whole (a dim or dashed left border, the
reason in a tooltip), and the context map screen lists every message."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from textual import on, work
from textual.app import App

from engine.api import ChatEngine
from engine.errors import KvchatError
from engine.events import ContextMap
from engine.store import SearchHit, Store
from tui.context_view import MessageContext, context_summary, message_contexts
from tui.live import LiveReply
from tui.messages import EngineEvent, ReplyStarted
from tui.screens.context_map import ContextMapScreen
from tui.screens.search_screen import SearchScreen
from tui.widgets.chat_pane import ChatPane, ReplyMessage, UserMessage


@dataclass(frozen=True)
class ContextState:
    """The last context map of a conversation, its spans matched to its messages."""

    conversation_id: int
    reply_id: int
    rows: list[MessageContext]
    summary: str


def context_tooltip(found: MessageContext) -> str | None:
    """Why a message is marked, for its tooltip; None for one the model has whole."""
    if found.state == "evicted":
        return f"The model no longer sees this message: {found.describe()}."
    if found.state == "partly evicted" or found.cut:
        return f"The model sees only part of this message: {found.describe()}."
    return None


def _reply_of(live: LiveReply, answer: int | None) -> int | None:
    """The stored reply a map is of: N answers' maps each name their answer."""
    if answer is not None and live.answers and answer < len(live.reply_ids):
        return live.reply_ids[answer]
    return live.reply_id


class FindActions(App[int]):
    engine: ChatEngine
    store: Store
    conversation_id: int | None
    replying: bool
    _context_states: dict[int, ContextState] | None = None
    """The last map of each conversation the engine may still hold, oldest first."""
    _context_turn: tuple[int, int, int] | None = None
    """(conversation, prompt, reply) of the turn whose context events come in."""
    # Provided by the app's other parts.
    show_history: Callable[[int], Awaitable[None]]
    shown_messages: Callable[[], list[UserMessage | ReplyMessage]]
    shown: Callable[[int | None], UserMessage | ReplyMessage | None]

    # -- the context map --------------------------------------------------------------

    @on(ReplyStarted)
    def _context_of_turn(self, message: ReplyStarted) -> None:
        turn = message.turn
        self._context_turn = (turn.conversation_id, turn.user_message_id,
                              turn.reply_message_id)

    @on(EngineEvent)
    def _context_event(self, message: EngineEvent) -> None:
        event, live = message.event, message.live
        if not isinstance(event, ContextMap):
            return
        turn = self._context_turn if live is None else (
            live.conversation_id, live.user_id, _reply_of(live, event.reply))
        if turn is None or None in turn:
            return
        cid, user_id, reply_id = turn  # type: ignore[misc]
        try:
            path = self.store.path_to(user_id)
        except KvchatError:
            return
        info = self.engine.info
        self._keep_context(ContextState(cid, reply_id, message_contexts(event, path, reply_id),
                                        context_summary(event, info.n_ctx if info else None)))
        self.mark_context()

    def _keep_context(self, state: ContextState) -> None:
        """Keep ``state`` as its conversation's map. The engine holds as many
        conversations as it decodes replies at once (``parallel``: each its own
        sequence, kept after its reply), so as many maps stay; with one, a reply in
        another conversation makes the last one stale."""
        if self._context_states is None:
            self._context_states = {}
        states = self._context_states
        states.pop(state.conversation_id, None)
        states[state.conversation_id] = state
        while len(states) > max(1, self.engine.parallel_replies):
            del states[next(iter(states))]

    def context_here(self) -> ContextState | None:
        """The context map of the conversation shown, if a reply in it sent one since
        the engine last held too many other conversations to keep it."""
        if self._context_states is None or self.conversation_id is None:
            return None
        return self._context_states.get(self.conversation_id)

    def mark_context(self) -> None:
        """Mark the messages the model no longer has whole."""
        state = self.context_here()
        found = {c.message_id: c for c in state.rows} if state else {}
        for widget in self.shown_messages():
            row = found.get(widget.message_id)
            widget.set_class(row is not None and row.state == "evicted", "-evicted")
            widget.set_class(row is not None and row.state == "partly evicted",
                             "-part-evicted")
            widget.set_class(row is not None and row.cut > 0, "-cut")
            widget.tooltip = context_tooltip(row) if row is not None else None

    @work(exclusive=True, group="screens")
    async def action_context_map(self) -> None:
        """F8: every message of the last reply's context, and what became of it."""
        state = self.context_here()
        if state is None:
            self.notify("No reply in this conversation has been read by the local engine "
                        "since it was opened: the map comes with the next one.",
                        title="Context map")
            return
        note = f"As of reply #{state.reply_id}: the last one the model read here."
        chosen = await self.push_screen_wait(ContextMapScreen(state.rows, state.summary,
                                                              note))
        if chosen is not None:
            self.go_to_message(chosen)

    def go_to_message(self, message_id: int) -> None:
        """Scroll the chat pane to the message and give it the focus."""
        widget = self.shown(message_id)
        if widget is None:
            self.notify(f"Message {message_id} is not on the path shown.",
                        severity="warning")
            return
        pane = self.query_one(ChatPane)
        # After the layout, so the widget's place is known.
        self.call_after_refresh(pane.scroll_to_widget, widget, animate=False, top=True)
        widget.focus(scroll_visible=False)

    # -- search -------------------------------------------------------------------------

    @work(exclusive=True, group="screens")
    async def action_search(self) -> None:
        """Ctrl+F: search every conversation; Enter opens the hit."""
        hit = await self.push_screen_wait(SearchScreen(self.store))
        if hit is not None:
            await self.open_hit(hit)

    async def open_hit(self, hit: SearchHit) -> None:
        """The hit's conversation, on the branch that holds its message, scrolled to it."""
        try:
            if hit.message_id is not None:
                self.store.set_active(hit.conversation_id, hit.message_id)
            self.conversation_id = hit.conversation_id
            await self.show_history(hit.conversation_id)
        except KvchatError as exc:  # deleted since it was found
            self.notify(exc.message, title="Search", severity="warning")
            return
        if hit.message_id is not None:
            self.go_to_message(hit.message_id)
