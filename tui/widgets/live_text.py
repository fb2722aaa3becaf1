"""Text that changes while a reply streams, without a screen-wide layout per change.

``Static.update`` always asks for a new layout of the whole screen, which redraws every
widget; at one update per 16 tokens that takes CPU time decoding needs. This widget
repaints only itself, and asks for a layout only when its number of lines changes.
While a pane is hidden (F2/F3, or a narrow screen) it only keeps the latest content:
showing the pane lays it out afresh anyway.
"""

from __future__ import annotations

from rich.console import RenderableType
from rich.text import Text
from textual.widget import Widget


class LiveText(Widget):
    DEFAULT_CSS = "LiveText { height: auto; }"

    def __init__(self, content: RenderableType = "", *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._content: RenderableType = content
        self._lines = 0

    def render(self) -> RenderableType:
        return self._content

    def show(self, content: RenderableType) -> None:
        self._content = content
        if not shown(self):
            self._lines = -1  # unknown: the next visible update lays out
            return
        width = self.size.width or 80
        if isinstance(content, str):
            content = Text(content)
        lines = len(self.app.console.render_lines(
            content, self.app.console.options.update_width(width), pad=False))
        self.refresh(layout=lines != self._lines)
        self._lines = lines


def shown(widget: Widget) -> bool:
    """Is ``widget`` and every container it is in displayed? (Not: is it scrolled into
    view.) Walks a handful of ancestors; no layout needed."""
    return all(node.display for node in widget.ancestors_with_self
               if isinstance(node, Widget))
