"""A one-line bar split into coloured segments; the colours are component classes,
so each theme's .tcss decides them."""

from __future__ import annotations

from typing import ClassVar

from rich.style import Style
from rich.text import Text
from textual.reactive import reactive

from tui.memory_view import shares
from tui.widgets.cached_styles import CachedStyles

SEGMENTS = ("weights-gpu", "weights-cpu", "kv-used", "kv-reserved", "kv-idle", "compute",
            "free")


class SegmentBar(CachedStyles):
    COMPONENT_CLASSES: ClassVar[set[str]] = {f"seg--{name}" for name in SEGMENTS}
    DEFAULT_CSS = "SegmentBar { height: 1; }"

    segments: reactive[tuple[tuple[str, int], ...]] = reactive(())
    """(segment name, size) in order."""

    def segment_style(self, name: str) -> Style:
        """A segment's colour (the free share's follows the pane's warning level)."""
        return self.component_style(f"seg--{name}")

    def render(self) -> Text:
        width = self.size.width
        sizes = [size for _, size in self.segments]
        text = Text()
        for (name, _), cells in zip(self.segments, shares(sizes, width), strict=True):
            if cells:
                # Free space is drawn as a light shade so it reads as empty at a glance.
                glyph = "░" if name in ("free", "kv-idle") else "█"
                text.append(glyph * cells, self.segment_style(name))
        return text
