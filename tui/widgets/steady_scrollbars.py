"""Scroll views that repaint their scrollbars only when a size changed.

Textual's ScrollView compares the virtual size a layout gives it with its own, and for
a Log those never agree, so every layout of the screen (one per streamed frame, as a
reply grows) repainted its scrollbar. A frame repaints the rectangle around everything
dirty: with the eviction log's scrollbar at the screen's right edge, that was the whole
screen instead of the chat column (the side panes' widgets rendered 128 times in a
70-frame reply before, 7 after).
"""

from __future__ import annotations

from textual.geometry import Size


class SteadyScrollbars:
    """Mix in before a ScrollView subclass (``class X(SteadyScrollbars, Log)``). Not a
    widget itself, so that it brings no default CSS of its own into the class's."""

    _seen_sizes: tuple[Size, ...] = ()
    virtual_size: Size

    def _size_updated(self, size: Size, virtual_size: Size, container_size: Size,
                      layout: bool = True) -> bool:
        sizes = (size, virtual_size, container_size, self.virtual_size)
        if sizes == self._seen_sizes:
            return False
        self._seen_sizes = sizes
        return super()._size_updated(  # type: ignore[misc]
            size, virtual_size, container_size, layout)
