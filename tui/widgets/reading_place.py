"""Where a reader scrolled up in a reply streamed as source is, kept while the reply
settles into Markdown.

The settle replaces the source, from the top, by Markdown blocks that take more or
fewer rows than the lines they render, and drops the blank rows reserved below the
text. A pane scrolled away from its end keeps its ``scroll_y``, so the text under the
reader would move by the difference, and a view within the rows that go would be
clamped to the end, where the pane's anchor then holds it. The place is kept as a
source line instead, found again in the source while it is still there and, once its
block is Markdown, at the same share of that block's height.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.widget import Widget

from tui.widgets.source_stream import SourceStream


@dataclass(frozen=True)
class ReadingPlace:
    """The top of the reader's view: ``row`` rows into source line ``line`` (counted
    from the start of the reply's text), or, with ``line`` None, ``y`` rows down the
    pane, above the source (which the settle does not move)."""

    line: int | None
    row: int = 0
    y: float = 0.0


def y_in(pane: Widget, widget: Widget) -> int:
    """The row of the pane's scrolled content at which ``widget`` starts (found for
    widgets out of view too: the compositor's full map)."""
    y = 0
    node: Widget | None = widget
    while node is not None and node is not pane:
        y += node.virtual_region.y
        parent = node.parent
        node = parent if isinstance(parent, Widget) else None
    return y


def find_place(pane: Widget, stream: SourceStream) -> ReadingPlace:
    """Where the view of ``pane`` starts, relative to the source in ``stream``."""
    into = int(pane.scroll_y) - y_in(pane, stream)
    if into < 0:
        return ReadingPlace(None, y=pane.scroll_y)
    line, row = stream.line_at(into)
    return ReadingPlace(line, row)


def place_y(pane: Widget, place: ReadingPlace, stream: SourceStream | None,
            dropped: int, blocks: list[tuple[Widget, int, int]]) -> float:
    """Where ``place`` is now: in ``stream`` if its line is still there (the stream's
    first ``dropped`` lines have gone into ``blocks``), else in the block that holds
    it. ``blocks``: each Markdown widget with the first source line it renders and how
    many lines."""
    if place.line is None:
        return place.y
    if stream is not None and stream.is_attached and place.line >= dropped:
        return y_in(pane, stream) + stream.rows_before(place.line - dropped) + place.row
    for block, first, lines in blocks:
        if first <= place.line < first + max(lines, 1):
            height = block.virtual_region.height
            # Markdown does not keep the source's rows: the same share of the block.
            share = (place.line - first) / max(lines, 1)
            return y_in(pane, block) + int(share * height)
    if blocks:  # below the last line (in the blank rows that were reserved): the end
        block = blocks[-1][0]
        return y_in(pane, block) + block.virtual_region.height
    return pane.scroll_y


class PlaceKeeper:
    """Keeps a pane's view on the reader's place while a reply settles: after each
    batch of source lines goes into Markdown, once laid out, the view moves to where
    the place now is (a frame in between may show it off by the batch's change)."""

    def __init__(self, pane: Widget, stream: SourceStream) -> None:
        self.pane = pane
        self.stream = stream
        self.place = find_place(pane, stream)
        self.blocks: list[tuple[Widget, int, int]] = []
        """Each Markdown widget made so far, the first source line it renders, and how
        many lines."""
        self.dropped = 0
        """Complete source lines gone from the stream into Markdown."""

    def settled(self, blocks: list[tuple[Widget, str]]) -> None:
        """``blocks`` (widget, source) have taken their lines off the stream, in order;
        none once the stream is gone."""
        for widget, part in blocks:
            newlines = part.count("\n")
            lines = newlines + (0 if not part or part.endswith("\n") else 1)
            self.blocks.append((widget, self.dropped, lines))
            self.dropped += newlines
        self.pane.call_after_refresh(self.restore)

    def restore(self) -> None:
        y = place_y(self.pane, self.place, self.stream, self.dropped, self.blocks)
        if round(y) != round(self.pane.scroll_y):
            self.pane.scroll_to(y=y, animate=False, immediate=True)
