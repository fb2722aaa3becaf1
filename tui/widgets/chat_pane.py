"""The conversation: user prompts, streamed Markdown replies, a stats line per reply.

A structured reply that was retried keeps its earlier attempts, collapsed and marked
malformed with their error, above the attempt that counts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.content import Content
from textual.events import MouseScrollUp, Resize
from textual.widget import Widget
from textual.widgets import Collapsible, Markdown, Static

from engine.events import OutputCheck, Retry
from tui.notes import attempt_title
from tui.safe_text import visible
from tui.widgets.reply_blocks import plan_write
from tui.widgets.reply_source import SourceReply
from tui.widgets.source_stream import SourceStream

RUNWAY_SHARE = 2
"""A reply streaming at the end of the pane reserves 1/RUNWAY_SHARE of the pane's
height in blank lines below its text and grows into them.

The pane then scrolls once per reserve, not once per frame: a frame that only adds text
inside the reserve repaints the lines that changed, where a scroll repaints (and sends
the terminal) the whole pane; and the text stays still while it is being read. The
reserve stays under the finished reply until something else is added to the pane."""


class UserMessage(Static, can_focus=True):
    """A prompt as the user typed it (shown literally, not as Markdown); Enter on it
    puts it in the message box to be sent as a new version."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "app.edit_message", "Edit", show=False)]

    def __init__(self, text: str, message_id: int | None = None) -> None:
        super().__init__(visible(text), markup=False)
        self.text = text
        self.message_id = message_id
        """The message's row in the store, once known."""

    def set_mark(self, mark: str) -> None:
        """Which version of the message this is (``‹ 2/3 ›``), under its text."""
        self.update(Content.assemble(visible(self.text), ("\n" + mark, "$text-muted")) if mark
                    else Content(visible(self.text)))


class ReplyNote(Static):
    """The small line under a reply (route, tokens, speed, retries). A new note lays
    the screen out only when its height changes: the route's note comes in while the
    reply's first tokens do, and a layout of the whole screen then costs decode time."""

    def __init__(self, note: str = "") -> None:
        super().__init__(visible(note), markup=False, classes="reply-stats")
        self._shown = note

    def show(self, note: str) -> None:
        note = visible(note)  # route reasons and errors quote the prompt and the reply
        width = self.content_region.width
        layout = not width or _rows(note, width) != _rows(self._shown, width)
        self._shown = note
        self.update(note, layout=layout)


def _rows(text: str, width: int) -> int:
    return max(1, len(Content(text).wrap(width)))


class ReplyMessage(SourceReply, can_focus=True):
    """One assistant reply: Markdown body (code fences highlighted by Pygments) and a
    small stats line.

    While streaming, each frame's text is appended with ``Markdown.append``, which parses
    again only from the last block on instead of the whole reply, inside one batch of
    screen updates; and a long reply goes into a sequence of ``Markdown`` widgets (see
    :mod:`tui.widgets.reply_blocks`), so that an append only ever touches the last few
    hundred lines, and the widgets before it keep their layout. ``text`` is always the
    whole reply.

    With ``source_view``, the text streams into a :class:`SourceStream` instead (its
    Markdown source, highlighted, at a fraction of the screen's CPU time) and is
    rendered as Markdown when the reply ends (:mod:`tui.widgets.reply_source`)."""

    def __init__(self, text: str = "", note: str = "", message_id: int | None = None,
                 source_view: bool = False) -> None:
        super().__init__()
        text = visible(text)  # shown, never acted on: see tui.safe_text
        self.source_view = source_view
        self.message_id = message_id
        """The reply's row in the store, once known."""
        self._note = note
        self.mark = ""
        """Which reply to its message this is (``‹ 2/3 ›``), before the note."""
        self._block = ""
        """What the last Markdown widget has been given while streaming."""
        self._held = ""
        """The start of a line held back until it is complete (it may start a block)."""
        self._parked = 0
        """Lines of finished blocks hidden behind the spacer (see :meth:`park`)."""
        self.text = text
        """The text of the attempt being shown (the final one once finished)."""
        self.attempt = 1
        self.strategy = "as_generated"
        self.strategies: list[str] = []
        """Strategies of the retries, in order."""
        self.checks: dict[int, OutputCheck] = {}
        self._bodies = [Markdown(text, classes="reply-body")]
        """The Markdown widgets, in order: kept here, as a query of the children would
        match every block's selectors at each append of a long reply."""

    def compose(self) -> ComposeResult:
        yield Widget(classes="reply-parked")
        yield self._bodies[0]
        if self.source_view:  # ready before the first tokens, which need no mount then
            yield SourceStream(classes="reply-source")
        yield ReplyNote(self._note)

    @property
    def blocks(self) -> list[Markdown]:
        """The Markdown widgets of the attempt shown, in order."""
        return list(self._bodies)

    @property
    def body(self) -> Markdown:
        """The Markdown widget the stream writes to (the last one)."""
        return self._bodies[-1]

    def _pane(self) -> ChatPane | None:
        pane = self.parent
        return pane if isinstance(pane, ChatPane) else None

    async def append(self, fragment: str) -> None:
        fragment = visible(fragment)
        self.text += fragment
        if self.source_view:
            await self._append_source(fragment)
            return
        with self.app.batch_update():
            self._extend_runway()
            await self._write_markdown(fragment)

    async def _write_markdown(self, fragment: str) -> None:
        pending, self._held = self._held + fragment, ""
        while pending:
            plan = plan_write(self._block, pending)
            await self._write(plan.head)
            if not plan.cut:
                self._held = plan.tail
                return
            await self._new_block()
            pending = plan.tail

    def _runway_step(self, share: float = 1 / RUNWAY_SHARE) -> int:
        pane = self.parent
        height = pane.scrollable_content_region.height if isinstance(pane, ChatPane) else 0
        return max(4, int(height * share))

    def _extend_runway(self) -> None:
        """Reserve the next blank lines (:data:`RUNWAY_SHARE`) once the text has nearly
        filled those reserved before, while the pane follows this reply. Judged by the
        last layout, before the frame's text goes in, so that the new reserve and the
        text take one layout and one scroll together."""
        pane = self.parent
        if not isinstance(pane, ChatPane) or not pane.following(self):
            return
        step = self._runway_step()
        # The note, last, ends where the text does: read off it rather than summing
        # every child, parked ones included, at each frame of a long reply.
        used = self.children[-1].virtual_region_with_margin.bottom
        if self.styles.min_height is not None and self.size.height - used > step // 3:
            return
        self.styles.min_height = used + step

    def close_runway(self) -> None:
        """Give back the blank lines reserved below the text."""
        if self.styles.min_height is not None:
            self.styles.min_height = None

    async def _write(self, text: str) -> None:
        if not text:
            return
        self._block += text
        await self.body.append(text)

    async def _new_block(self) -> None:
        await self._write_held()
        block = Markdown(classes="reply-body")
        body = self.body
        self._bodies.append(block)
        await self.mount(block, after=body)
        self._block = ""
        # Once laid out, the block just finished has its final height.
        self.call_after_refresh(self._park_if_out_of_view)

    def _park_if_out_of_view(self) -> None:
        pane = self.parent
        if isinstance(pane, ChatPane) and pane.following(self):
            self.park(pane.scrollable_content_region.height)

    def park(self, keep: int) -> None:
        """Replace finished blocks that lie more than ``keep`` lines above the end of
        the reply by one empty spacer of their height.

        Every screen update lays out and walks every widget on the screen, visible or
        not; a parked block (``display: none``) is skipped, so an update costs the
        same at the end of a long reply as at its start. The pane unparks them all as
        soon as they could come into view (the user scrolls up, the width changes)."""
        blocks = [b for b in self.blocks[:-1] if b.display]  # the last one is streaming
        below = self.query_one(ReplyNote).outer_size.height + \
            self.blocks[-1].outer_size.height
        cut = 0
        for i in range(len(blocks) - 1, -1, -1):
            if below >= keep:
                cut = i + 1
                break
            below += blocks[i].outer_size.height
        if not cut:
            return
        spacer = self.query_one(".reply-parked", Widget)
        height = sum(b.outer_size.height for b in blocks[:cut])
        with self.app.batch_update():
            for block in blocks[:cut]:
                block.display = False
            self._parked += height
            spacer.styles.height = self._parked
            spacer.display = True

    def unpark(self) -> None:
        spacer = self.query_one(".reply-parked", Widget)
        if not spacer.display:
            return
        with self.app.batch_update():
            spacer.display = False
            self._parked = 0
            spacer.styles.height = 0
            for block in self.blocks:
                block.display = True

    async def _write_held(self) -> None:
        """Write the incomplete line held back (the reply ended, or a block did)."""
        if self._held:
            held, self._held = self._held, ""
            await self._write(held)

    async def _reset_body(self, text: str) -> None:
        """One Markdown widget showing ``text`` (no stream)."""
        await self._drop_source()
        await self._write_held()
        self.unpark()
        first, *rest = self.blocks
        self._bodies = [first]
        if rest:
            await self.remove_children(rest)
        self._block = ""
        await first.update(text)

    def record_check(self, check: OutputCheck) -> None:
        self.checks[check.attempt] = check

    async def start_attempt(self, retry: Retry) -> None:
        """Fold the attempt shown so far away and start an empty body for the next."""
        await self._write_held()
        check = self.checks.get(self.attempt)
        error = check.errors[0] if check is not None and check.errors else retry.reason
        await self.add_folded(self.attempt, self.strategy, error, self.text)
        self.attempt, self.strategy = retry.attempt, retry.strategy
        self.strategies.append(retry.strategy)
        self.text = ""
        await self._reset_body("")

    async def add_folded(self, number: int, strategy: str, error: str, text: str) -> None:
        """An earlier attempt, collapsed above the body and marked malformed."""
        raw = Static(visible(text) or "(no text)", markup=False, classes="attempt-text")
        title = Content(attempt_title(number, strategy, visible(error)))  # not markup
        folded = Collapsible(raw, title=title,  # type: ignore[arg-type]
                             collapsed=True, classes="attempt")
        await self.mount(folded, before=self.query_one(".reply-parked", Widget))

    async def finish(self, note: str, final_text: str | None = None) -> None:
        await self._settle_source()
        if self._torn_down():  # the app closed while the Markdown went in
            return
        await self._write_held()
        final_text = None if final_text is None else visible(final_text)
        # The final text is authoritative: a repaired reply streamed no tokens of its own.
        if final_text is not None and final_text != self.text:
            self.text = final_text
            await self._reset_body(final_text)
        self.set_note(note)

    def set_note(self, note: str) -> None:
        self._note = note
        shown = " · ".join(part for part in (self.mark, note) if part)
        for stats in self.query_children(ReplyNote):
            stats.show(shown)

    def set_mark(self, mark: str) -> None:
        self.mark = mark
        self.set_note(self._note)

    def _torn_down(self) -> bool:
        """Is the app closing, removing this reply's widgets under an await?"""
        return not self.is_attached or self._pruning

    @property
    def note(self) -> str:
        return str(self.query_one(ReplyNote).render())


class ChatPane(VerticalScroll):
    """Scrolls with the stream (anchored) unless the user scrolls away."""

    def on_mount(self) -> None:
        self.anchor()

    def following(self, reply: ReplyMessage) -> bool:
        """Is the pane at its end, following ``reply`` as the last thing in it?"""
        return (self.is_anchored and self.scroll_y >= self.max_scroll_y - 1
                and bool(self.children) and self.children[-1] is reply)

    def unpark(self) -> None:
        """Show every parked block (see :meth:`ReplyMessage.park`)."""
        for reply in self.query_children(ReplyMessage):
            reply.unpark()

    def on_resize(self, event: Resize) -> None:
        # A new width gives blocks new heights: the spacers' heights would be wrong.
        self.unpark()

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        # Following the stream only ever scrolls down; up is the user, who may look.
        if new_value < old_value:
            self.unpark()
            self.expand_sources()

    def expand_sources(self, then: Callable[[], object] | None = None) -> bool:
        """A reply streaming as source in a window shows all of it, the view kept
        where it is; ``then`` runs once that is laid out. False if there was none."""
        last = self.children[-1] if self.children else None
        shift = last.expand_source() if isinstance(last, ReplyMessage) else 0
        if not shift:
            return False
        # The rows that come back above push the view down as far; an anchored pane
        # keeps its end in view by itself.
        if not self.is_anchored or getattr(self, "_anchor_released", False):
            self.call_after_refresh(self.scroll_relative, y=shift, animate=False)
        if then is not None:
            self.call_after_refresh(then)
        return True

    # A window fills the pane, which may then have nothing to scroll: the user's first
    # move up shows the whole reply, and the next ones scroll through it.

    def on_mouse_scroll_up(self, event: MouseScrollUp) -> None:
        self.expand_sources()

    def action_scroll_up(self) -> None:
        if not self.expand_sources(then=super().action_scroll_up):
            super().action_scroll_up()

    def action_page_up(self) -> None:
        if not self.expand_sources(then=super().action_page_up):
            super().action_page_up()

    def action_scroll_home(self) -> None:
        if not self.expand_sources(then=super().action_scroll_home):
            super().action_scroll_home()

    def close_runways(self) -> None:
        """Something goes below the last reply: no blank lines between them. (Only the
        last child can hold a reserve: whatever is added after it closes it.)"""
        last = self.children[-1] if self.children else None
        if isinstance(last, ReplyMessage):
            last.close_runway()

    async def add_user(self, text: str, message_id: int | None = None) -> UserMessage:
        self.close_runways()
        widget = UserMessage(text, message_id)
        await self.mount(widget)
        return widget

    async def add_reply(self, text: str = "", note: str = "",
                        message_id: int | None = None,
                        source_view: bool = False) -> ReplyMessage:
        self.close_runways()
        widget = ReplyMessage(text, note, message_id, source_view)
        await self.mount(widget)
        return widget

    async def add_notice(self, text: str, before: ReplyMessage | None = None) -> None:
        if before is None:
            self.close_runways()
        await self.mount(Static(visible(text), classes="notice", markup=False), before=before)

    async def clear(self) -> None:
        await self.remove_children()

    def last_reply(self) -> ReplyMessage | None:
        replies = self.query(ReplyMessage)
        return replies.last() if replies else None
