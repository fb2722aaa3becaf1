"""A reply streamed as its Markdown source: highlighted while it streams, in a window
that follows the end of the pane, and rendered as Markdown, a few blocks at a time,
when it ends."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from textual.containers import Vertical
from textual.widgets import Markdown

from tui.widgets.reading_place import PlaceKeeper
from tui.widgets.reply_blocks import split_blocks
from tui.widgets.source_stream import SourceStream

if TYPE_CHECKING:
    from tui.widgets.chat_pane import ChatPane

SOURCE_RUNWAY = 0.75
"""The share of the pane reserved below a reply streaming as source: every time the
text reaches the end of its reserve, the pane lays out and repaints whole, which is
most of what streaming source costs; three quarters of a pane between two such
repaints keeps a quarter of the text before in view (docs/tui.md)."""


SETTLE_BLOCKS = 4
"""Markdown blocks (of up to 20 lines each) rendered per screen update when a reply
streamed as source ends."""


class SourceReply(Vertical):
    """The source view of :class:`tui.widgets.chat_pane.ReplyMessage`, which provides
    the Markdown blocks, the reserve of blank lines and the parking used here."""

    _bodies: list[Markdown]
    _block: str

    # -- provided by ReplyMessage ------------------------------------------------------

    @property
    def body(self) -> Markdown:
        raise NotImplementedError

    def _pane(self) -> ChatPane | None:
        raise NotImplementedError

    def _runway_step(self, share: float) -> int:
        raise NotImplementedError

    def close_runway(self) -> None:
        raise NotImplementedError

    def _park_if_out_of_view(self) -> None:
        raise NotImplementedError

    def _torn_down(self) -> bool:
        raise NotImplementedError

    # -- the source view ---------------------------------------------------------------

    async def _append_source(self, fragment: str) -> None:
        streams = self.query_children(SourceStream)
        if streams:
            stream = streams.first()
        else:
            # A retried attempt's stream: it takes its window once laid out.
            stream = SourceStream(width=self.content_size.width, classes="reply-source")
            await self.mount(stream, before=self.query_one(".reply-stats"))
            self.call_after_refresh(self.prepare)
        if not stream.window:
            stream.reserve_rows = self._source_reserve()
        stream.append(fragment)

    def prepare(self) -> None:
        """Once laid out, before the first tokens: a source stream takes the height it
        will stream in (see :meth:`SourceStream.follow`), so that no frame of the
        reply lays the screen out while the pane follows it."""
        pane = self._pane()
        for stream in self.query_children(SourceStream):
            stream.warm()
            if pane is not None and pane.children[-1] is self:
                stream.follow(self._window_rows(pane, stream))

    def _window_rows(self, pane: ChatPane, stream: SourceStream) -> int:
        """The rows left free in the pane, where the conversation does not fill it yet
        (it then stays still while the reply streams); else :data:`SOURCE_RUNWAY` of
        the pane (it scrolls once, before the first tokens)."""
        height = pane.scrollable_content_region.height
        runway = max(4, int(height * SOURCE_RUNWAY))
        first = pane.children[0]
        if pane.max_scroll_y > 0 or not (self.region and first.region):
            return runway
        # The pane, anchored, shows what fits at its bottom: the rows above it are free.
        used = self.region.bottom - (first.region.y - first.styles.margin.top)
        return max(runway, stream.size.height + height - used)

    def expand_source(self) -> int:
        """The source stream shows all its rows again; returns how many came back above
        what it showed."""
        return sum(stream.expand() for stream in self.query_children(SourceStream))

    def _source_reserve(self) -> int:
        """Blank rows for a source stream that shows all its rows to grow into:
        following the end of the pane, :data:`SOURCE_RUNWAY` of it; else a few."""
        pane = self._pane()
        if pane is None or pane.children[-1] is not self:
            return 8
        return self._runway_step(SOURCE_RUNWAY) if pane.following(self) else 8

    async def _settle_source(self) -> None:
        """Replace the source shown while streaming by the text rendered as Markdown,
        in the blocks a Markdown stream would have made, :data:`SETTLE_BLOCKS` at a time
        from the top, each batch taking its lines off the source (a long reply takes
        seconds to render; the screen and the message box stay live meanwhile, and the
        end of the reply, where the reader is, stays in view throughout). The source's
        blank rows go with it: a reserve kept below the Markdown, which may take fewer
        rows than its source, would fill the pane with nothing."""
        streams = self.query_children(SourceStream)
        if not streams:
            return
        stream = streams.first()
        stream.expand()
        pane = self._pane()
        # A reader scrolled up stays on the text they were reading.
        keeper = PlaceKeeper(pane, stream) \
            if pane is not None and not pane.following(self) else None
        parts = split_blocks(stream.text)
        self.close_runway()
        body = self.body
        await body.update(parts[0])
        stream.drop_head(parts[0].count("\n"))
        if keeper:
            keeper.settled([(body, parts[0])])
        for start in range(1, len(parts), SETTLE_BLOCKS):
            batch = parts[start:start + SETTLE_BLOCKS]
            with self.app.batch_update():
                new = [Markdown(part, classes="reply-body") for part in batch]
                self._bodies += new
                await self.mount_all(new, before=stream)
                stream.drop_head(sum(part.count("\n") for part in batch))
                if keeper:
                    keeper.settled(list(zip(new, batch, strict=True)))
            await asyncio.sleep(0)  # let the screen and the keys in
            if self._torn_down():
                return
        await stream.remove()
        if keeper:
            keeper.settled([])
        self._block = parts[-1]
        self.call_after_refresh(self._park_if_out_of_view)

    async def _drop_source(self) -> None:
        await self.query_children(SourceStream).remove()
