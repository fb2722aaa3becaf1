"""KV cells in use over time, drawn against the whole context.

Textual's Sparkline scales each chart between the smallest and largest value it holds,
so a cache sitting at 95% would draw as a flat floor; this chart's scale is fixed at
0..n_ctx, so height means share of the context, and the reserve for the reply in
flight is drawn above the used cells.
"""

from __future__ import annotations

from collections import deque
from typing import ClassVar

from rich.text import Text

from tui.widgets.cached_styles import CachedStyles
from tui.widgets.live_text import shown

BARS = " ▁▂▃▄▅▆▇█"


class CellsChart(CachedStyles):
    COMPONENT_CLASSES: ClassVar[set[str]] = {"chart--used", "chart--reserved",
                                             "chart--empty"}

    def __init__(self, history: int = 240, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.samples: deque[tuple[int, int]] = deque(maxlen=history)
        """(used, reserved) cells, oldest first; bounded so a long session stays cheap."""
        self.n_ctx = 0

    def add(self, samples: list[tuple[int, int]], n_ctx: int) -> None:
        """(used, reserved) samples, oldest first; one redraw for all of them."""
        self.n_ctx = n_ctx
        added = False
        for sample in samples:
            if not self.samples or self.samples[-1] != sample:
                self.samples.append(sample)
                added = True
        if added and shown(self):  # a hidden chart draws its samples when shown again
            self.refresh()

    def render(self) -> Text:
        width, height = self.size.width, max(1, self.size.height)
        points = list(self.samples)[-width:] if width else []
        used_style = self.component_style("chart--used")
        reserved_style = self.component_style("chart--reserved")
        empty_style = self.component_style("chart--empty")
        steps = height * 8
        columns: list[tuple[int, int]] = []
        for used, reserved in points:
            scale = steps / self.n_ctx if self.n_ctx else 0
            u = round(used * scale)
            columns.append((u, min(steps, u + round(reserved * scale))))
        # One span per run of a style, not one per cell: a 44x15 chart is ~660 cells
        # but a few dozen runs, and the chart is redrawn with every KV sample.
        text = Text()
        pad = width - len(columns)
        for row in range(height - 1, -1, -1):
            low = row * 8
            empty = "·" if row == 0 else " "
            run, run_style = [empty * pad], empty_style
            for used_h, top in columns:
                if used_h > low:
                    char, style = BARS[min(8, used_h - low)], used_style
                elif top > low:
                    char, style = BARS[min(8, top - low)], reserved_style
                else:
                    char, style = empty, empty_style
                if style is not run_style:
                    text.append("".join(run), run_style)
                    run, run_style = [], style
                run.append(char)
            text.append("".join(run), run_style)
            if row:
                text.append("\n")
        return text
