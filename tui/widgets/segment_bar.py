"""A one-line bar split into coloured segments; the colours are component classes,
so each theme's .tcss decides them."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from tui.memory_view import shares

SEGMENTS = ("weights-gpu", "weights-cpu", "kv-used", "kv-reserved", "kv-idle", "compute",
            "free")


class SegmentBar(Widget):
    COMPONENT_CLASSES: ClassVar[set[str]] = {f"seg--{name}" for name in SEGMENTS}
    DEFAULT_CSS = "SegmentBar { height: 1; }"

    segments: reactive[tuple[tuple[str, int], ...]] = reactive(())
    """(segment name, size) in order."""

    def render(self) -> Text:
        width = self.size.width
        sizes = [size for _, size in self.segments]
        text = Text()
        for (name, _), cells in zip(self.segments, shares(sizes, width), strict=True):
            if cells:
                # Free space is drawn as a light shade so it reads as empty at a glance.
                glyph = "░" if name in ("free", "kv-idle") else "█"
                text.append(glyph * cells, self.get_component_rich_style(f"seg--{name}"))
        return text
