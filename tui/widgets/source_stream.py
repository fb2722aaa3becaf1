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

PAGE_KEEP = 0.25
"""The share of a window's rows of text kept in view when it turns the page."""

_PROSE = re.compile(r"(?!\s*(?:-\s|\d+\.\s|>\s))[^\\`*_~@#\[]*\Z")
"""A Markdown line none of Pygments' Markdown rules marks up: no list item or quote
at its start, and none of the characters that open emphasis, code, links, tags or
escapes."""

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
    if language == "markdown" and _PROSE.match(line):
        # Pygments' Markdown rules try a dozen patterns at every word of a line of
        # prose, to find none: most of a streaming reply's rendering time, for nothing.
        return Content(line).stylize_before("$text")
    return lexed_line(line, language)


def lexed_line(line: str, language: str) -> Content:
    """:func:`highlight_line` by Pygments, whatever the line."""
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
        self.window = 0
        """Rows shown while the pane follows the end of the text (0: every row)."""
        self._top = 0
        """The first row shown in the window."""

    def warm(self) -> None:
        """Render a line and drop it: Pygments' Markdown lexer is made, and styles are
        parsed, before the first tokens instead of in their frame (20 ms on 2 cores)."""
        self._render("# A *warm* `start`", "markdown")

    def follow(self, rows: int) -> None:
        """From now on keep a height of ``rows`` and show the end of the text in it.

        Growing would lay the screen out and scroll the pane, repainting all of it,
        every time the text passes the rows reserved for it: on a CPU whose cores
        decode, most of what a streaming reply costs the screen. A window turns the
        page itself instead (:data:`PAGE_KEEP`), repainting only its own rows."""
        self.window = max(2, rows)
        self._height = self.window
        self._page()
        self.refresh(layout=True)

    def expand(self) -> int:
        """Show every row again; returns the rows that came back above the window (a
        pane scrolled away from the end moves by as many to keep its view still)."""
        if not self.window:
            return 0
        shift, self._top, self.window = self._top, 0, 0
        self._height += shift
        self.refresh(layout=True)
        return shift

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
        self.expand()
        n_lines = min(n_lines, len(self._lines))
        rows = sum(self._row_counts[:n_lines])
        del self._lines[:n_lines], self._row_counts[:n_lines], self._rows[:rows]
        cut = 0
        for _ in range(n_lines):
            cut = self.text.index("\n", cut) + 1
        self.text = self.text[cut:]
        self._height = max(1, self._height - rows)
        self.refresh(layout=True)

    def line_at(self, row: int) -> tuple[int, int]:
        """The source line shown at ``row`` of all the rows (not a window's), and the
        row within it; past the text, the line after the last."""
        start = 0
        for line, count in enumerate(self._row_counts):
            if row < start + count:
                return line, row - start
            start += count
        if row < start + len(self._open_rows):
            return len(self._lines), row - start
        return len(self._lines) + (1 if self._open_rows else 0), 0

    def rows_before(self, line: int) -> int:
        """Rows taken by the source lines before ``line``."""
        return sum(self._row_counts[:line]) + \
            (len(self._open_rows) if line > len(self._lines) else 0)

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
        if self.window:
            if self._page():
                self.refresh()
                return
        elif total + 1 > self._height:
            self._height = total + 1 + self.reserve_rows
            self.refresh(layout=True)
            return
        # Rows [first_changed, total] of the text, where the window shows them.
        top = max(0, first_changed - self._top)
        self.refresh(Region(0, top, self.size.width, total - self._top - top + 1))

    def _page(self) -> bool:
        """Turn the window's page once the text reaches its last row: the last
        :data:`PAGE_KEEP` of the window's rows of text stay at its top, for context."""
        total = len(self._rows) + len(self._open_rows)
        if total < self._top + self.window:
            return False
        self._top = max(0, total - int(self.window * PAGE_KEEP))
        return True

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return self._height

    def render_line(self, y: int) -> Strip:
        if self.app.theme != self._theme:
            self._rerender()
        y += self._top
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
        if self.window:  # the rows moved: the end goes back in view
            self._top = 0
            self._page()
            self.refresh()
            return
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
