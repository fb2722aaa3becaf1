"""A streaming reply shown as its Markdown source, highlighted, at a few cells a frame.

Where the screen shares its CPU cores with decoding, every millisecond the screen
thread runs is a millisecond the decode stands still (its threads wait for each other at
each step of the graph): rendering a reply with Textual's ``Markdown`` widget while it
streams costs a 2-core machine about a tenth of its decode speed (docs/tui.md). This
widget shows the text as it comes, as source: headings, emphasis and code fences
coloured by Pygments (code in its fence's language), wrapped to the width. A frame
renders only the lines it adds, repaints only those rows, and asks for a layout only
when the text outgrows the rows reserved for it (``reserve_rows`` at a time: a layout
repaints the whole screen). The reply is rendered as Markdown once decoding has
finished (:class:`tui.widgets.chat_pane.ReplyMessage`).
"""

from __future__ import annotations

import re
from functools import lru_cache

from pygments.lexer import Lexer
from pygments.lexers import get_lexer_by_name
from pygments.util import ClassNotFound
from rich.segment import Segment
from textual.content import Content, Span
from textual.events import Resize
from textual.geometry import Region, Size
from textual.highlight import HighlightTheme
from textual.strip import Strip
from textual.widget import Widget

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([\w+#.-]*)")


@lru_cache(maxsize=32)
def lexer_for(language: str) -> Lexer:
    """Pygments' lexer for a fence's language (plain text for one it does not know);
    made once per language, as finding one by name costs more than lexing a line."""
    try:
        return get_lexer_by_name(language, stripnl=False)
    except ClassNotFound:
        return get_lexer_by_name("text", stripnl=False)


def highlight_line(line: str, language: str) -> Content:
    """One source line with the theme-variable styles Textual's Markdown code blocks
    use (``HighlightTheme``), so that both look alike in every theme."""
    spans: list[Span] = []
    start = 0
    # Lexed with its newline: Pygments' Markdown rules (headings, lists) end in one.
    for token_type, token in lexer_for(language).get_tokens(line + "\n"):
        end = min(start + len(token), len(line))
        if end <= start:
            break
        kind = token_type
        while kind is not None:
            if style := HighlightTheme.STYLES.get(kind):
                spans.append(Span(start, end, style))
                break
            kind = kind.parent
        start = end
    return Content(line, spans=spans).stylize_before("$text")


class SourceStream(Widget):
    """Append text with :meth:`append`; ``text`` is all of it."""

    DEFAULT_CSS = "SourceStream { height: auto; }"

    def __init__(self, *, width: int = 0, classes: str | None = None) -> None:
        """``width``: the width it will be laid out at, where known, so that the first
        rows need not be rendered again once it is."""
        super().__init__(classes=classes)
        self.text = ""
        self._lines: list[tuple[str, str]] = []
        """Complete source lines with the language each is highlighted as."""
        self._rows: list[Strip] = []
        """Rendered rows of the complete lines at ``_width``."""
        self._row_counts: list[int] = []
        """Rows of each complete line."""
        self._open_rows: list[Strip] = []
        """Rows of the line still being written."""
        self._fence: tuple[str, str] | None = None
        """The open code fence: its marker and language."""
        self._width = width
        self._height = 0
        self._theme = ""
        """The theme the rows were rendered in."""
        self.reserve_rows = 0
        """Blank rows to add below the text when it outgrows its height."""

    # -- text -----------------------------------------------------------------------

    def append(self, fragment: str) -> None:
        if not fragment:
            return
        start = self.text.rfind("\n") + 1
        self.text += fragment
        first_changed = len(self._rows)  # where the open line's rows began
        *complete, rest = self.text[start:].split("\n")
        for line in complete:
            language = self._language_of(line)
            self._lines.append((line, language))
            rows = self._render(line, language)
            self._rows.extend(rows)
            self._row_counts.append(len(rows))
        self._open_rows = self._render(rest, self._fence[1] if self._fence else "markdown") \
            if rest else []
        self._show(first_changed)

    def drop_head(self, n_lines: int) -> None:
        """Forget the first ``n_lines`` complete lines (now shown some other way)."""
        n_lines = min(n_lines, len(self._lines))
        rows = sum(self._row_counts[:n_lines])
        del self._lines[:n_lines], self._row_counts[:n_lines], self._rows[:rows]
        cut = 0
        for _ in range(n_lines):
            cut = self.text.index("\n", cut) + 1
        self.text = self.text[cut:]
        self._height = max(1, self._height - rows)
        self.refresh(layout=True)

    def _language_of(self, line: str) -> str:
        """The language ``line`` is highlighted as, opening or closing fences."""
        match = _FENCE.match(line)
        if self._fence is None:
            if match:
                self._fence = (match.group(1), match.group(2) or "text")
            return "markdown"
        if match and match.group(1)[0] == self._fence[0][0] \
                and len(match.group(1)) >= len(self._fence[0]) and not match.group(2):
            self._fence = None
            return "markdown"
        return self._fence[1]

    # -- rows -----------------------------------------------------------------------

    def _render(self, line: str, language: str) -> list[Strip]:
        self._theme = self.app.theme
        width = max(1, self._width or self.size.width or 80)
        content = highlight_line(line.expandtabs(4), language) if line.strip() \
            else Content("")
        base = self.visual_style
        rows = []
        for row in content.wrap(width) or [Content("")]:
            segments = [Segment(text, style.rich_style)
                        for text, style in row.render(base, end="",
                                                      parse_style=self._get_style)]
            rows.append(Strip(segments).extend_cell_length(width, base.rich_style))
        return rows

    def _show(self, first_changed: int) -> None:
        total = len(self._rows) + len(self._open_rows)
        if total + 1 > self._height:
            self._height = total + 1 + self.reserve_rows
            self.refresh(layout=True)
            return
        self.refresh(Region(0, first_changed, self.size.width, total - first_changed + 1))

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return self._height

    def render_line(self, y: int) -> Strip:
        if self.app.theme != self._theme:
            self._rerender()
        if y < len(self._rows):
            return self._rows[y]
        y -= len(self._rows)
        if y < len(self._open_rows):
            return self._open_rows[y]
        return Strip.blank(self.size.width, self.rich_style)

    def on_resize(self, event: Resize) -> None:
        if event.size.width == self._width:
            return
        self._width = event.size.width
        self._rerender()
        self._height = len(self._rows) + len(self._open_rows) + 1 + self.reserve_rows
        self.refresh(layout=True)

    def _rerender(self) -> None:
        """Every row again: a new width, or a new theme's colours."""
        self._theme = self.app.theme
        rendered = [self._render(line, language) for line, language in self._lines]
        self._rows = [row for rows in rendered for row in rows]
        self._row_counts = [len(rows) for rows in rendered]
        rest = self.text[self.text.rfind("\n") + 1:]
        self._open_rows = self._render(rest, self._fence[1] if self._fence else "markdown") \
            if rest else []
