"""Component styles resolved once, not at every render.

``Widget.get_component_rich_style`` walks the stylesheet's rules on every call: a few
tenths of a millisecond each, and the gauges that redraw at each KV sample of a reply
ask for several. The answer only changes with the theme or with the classes that the
stylesheet keys the colours on (here the widget's and its pane's: a warning level).
"""

from __future__ import annotations

from rich.style import Style
from textual.widget import Widget


class CachedStyles(Widget):
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._component_styles: dict[tuple[object, ...], Style] = {}

    def component_style(self, name: str) -> Style:
        """``get_component_rich_style(name)``, kept per theme and classes."""
        parent = self.parent
        key = (self.app.theme, frozenset(self.classes),
               frozenset(parent.classes) if parent is not None else frozenset(), name)
        style = self._component_styles.get(key)
        if style is None:
            style = self._component_styles[key] = self.get_component_rich_style(name)
        return style
