"""Where a streamed Markdown reply may be cut into separately rendered blocks.

Textual's ``Markdown.append`` joins and re-splits its whole source on every append, and
every append lays out a widget holding more block widgets than the last, so a single
``Markdown`` per reply costs more per update the longer the reply gets. A reply is
therefore streamed into a sequence of ``Markdown`` widgets: once the current one holds
:data:`BLOCK_LINES` lines (or :data:`BLOCK_CHARS` characters), the stream moves on to a
new widget at the next point where cutting changes nothing about how the text renders.

A cut is safe at the start of a line that follows a blank line, starts at the left
margin, and opens a top-level block that no earlier block runs into: not inside a code
fence, not a list item or an indented continuation of a list, not inside a blockquote or
an HTML block. markdown-it (the parser Textual's ``Markdown`` uses) is the judge.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

from markdown_it import MarkdownIt

BLOCK_LINES = 20
"""Lines in one Markdown widget before the stream looks for a place to start another.
A frame repaints the whole widget it grows, so smaller is cheaper per frame: 20 lines
gave 15 ms a frame against 17 for 60 (docs/tui.md), and 6.5 ms against 7.7 a chunk at
the start of a 10,000-token reply."""
BLOCK_CHARS = 4_000
"""The same, for replies of few very long lines."""

_FENCE_LINE = re.compile(r"^ {0,3}(`{3,}|~{3,})", re.MULTILINE)
_PARSER = MarkdownIt("gfm-like")


def safe_cut(source: str, line_start: int) -> bool:
    """Would rendering ``source[:line_start]`` and ``source[line_start:]`` as two
    documents look the same as rendering ``source`` as one? ``line_start`` is the start
    of a line; the text from there to the next newline must be complete."""
    head = source[:line_start]
    # An odd number of fence lines before the cut most likely means an open fence;
    # skipping those spares a parse per blank line of a long code block.
    if len(_FENCE_LINE.findall(head)) % 2:
        return False
    line = head.count("\n")
    starts = False
    for token in _PARSER.parse(source):
        if token.level != 0 or token.map is None:
            continue
        first, end = token.map
        if first < line < end:
            return False  # a block (list, fence, quote, table) runs across the cut
        if first == line:
            starts = True
    return starts


@dataclass
class Cut:
    """How to write the next fragment: ``head`` to the current block, then, when
    ``cut`` is set, start a new block; ``tail`` is written to the new block (after a
    cut) or held back until its line is complete (without one)."""

    head: str
    cut: bool
    tail: str


def plan_write(block: str, pending: str) -> Cut:
    """Split ``pending`` (text not yet written; ``block`` is what the current block
    holds) at the first safe cut past the point where the block is full enough.

    Only a line that follows a blank line and starts at the margin can be a cut; while
    such a line is incomplete it is held back, since its first characters do not yet
    say what it is (``1`` may become ``1. item`` and continue a list)."""
    text = block + pending
    full_at = _full_at(text)
    if full_at is None:
        return Cut(pending, False, "")
    pos = max(len(block), full_at)
    while True:
        start = _next_candidate(text, pos)
        if start is None:
            return Cut(pending, False, "")
        end = text.find("\n", start)
        if end < 0:
            return Cut(text[len(block):start], False, text[start:])
        if safe_cut(text[:end + 1], start):
            return Cut(text[len(block):start], True, text[start:])
        pos = end + 1


def split_blocks(text: str) -> list[str]:
    """``text`` cut where a stream fed all of it at once would cut it (at least one
    block, possibly empty)."""
    blocks: list[str] = []
    block, pending = "", text
    while pending:
        plan = plan_write(block, pending)
        block += plan.head
        if not plan.cut:
            block += plan.tail
            break
        blocks.append(block)
        block, pending = "", plan.tail
    blocks.append(block)
    return blocks


def _full_at(text: str) -> int | None:
    """Where ``text`` reaches :data:`BLOCK_LINES` lines or :data:`BLOCK_CHARS`
    characters, whichever comes first; None if it does not."""
    at = BLOCK_CHARS if len(text) >= BLOCK_CHARS else None
    newline = -1
    for _ in range(BLOCK_LINES):
        newline = text.find("\n", newline + 1)
        if newline < 0 or (at is not None and newline >= at):
            return at
    return newline + 1 if at is None else min(at, newline + 1)


def _next_candidate(text: str, pos: int) -> int | None:
    """The first line start at or after ``pos`` that follows a blank line and whose
    first character is known and is not whitespace."""
    newline = text.find("\n", max(pos - 1, 0))
    while newline >= 0:
        start = newline + 1
        if start < len(text) and not text[start].isspace():
            prev_start = text.rfind("\n", 0, newline) + 1
            if not text[prev_start:newline].strip():
                return start
        newline = text.find("\n", start)
    return None


class CodeFence(NamedTuple):
    language: str
    """The fence's info string's first word ("" when none)."""
    code: str


def code_blocks(text: str) -> list[CodeFence]:
    """The fenced code blocks of a Markdown reply, in order, as markdown-it finds them:
    backtick or tilde fences of any length, in lists and quotes too, and a fence the
    reply left open (it runs to the end)."""
    return [CodeFence(token.info.split(maxsplit=1)[0] if token.info.strip() else "",
                      token.content)
            for token in _PARSER.parse(text) if token.type == "fence"]
