"""Ending a grammar-constrained reply within its token limit.

The retry ladder's grammar step decodes under the request's ``max_tokens``, which it
never raises: the limit is the user's. A reply the limit cuts off is a failed attempt
(nothing closes its brackets afterwards), so the step has to plan for the limit while
it decodes. A grammar counts characters, not tokens, so the plan lives beside it: the
sampler shows each token it is about to emit to a budget, which may ask for another.

The rule, for JSON and for lists: another element (an array item, an object member, a
list item) is started only when one as long as the longest so far at that level, the
brackets still open and the end of the turn all fit in the tokens left. Otherwise the
innermost container is closed instead (the reply ends, for a list), where the grammar
allows it: a schema's required keys and ``minItems`` still come first. Decisions are
made at element boundaries only: a string or number already started is never cut
short, since a closed fragment (``"Par"``, ``6``) would pass off a truncation as an
answer. The reply may hold fewer items than the model would have written; each one it
holds is whole. Once a JSON value is complete the reply ends (the grammar would allow
only whitespace after it). Fenced code gets no budget: a program closed early is a
broken program, so a code reply that does not fit is cut off and fails its check.

Works on token bytes: JSON's structural characters are ASCII, which never occur inside
a multi-byte UTF-8 character, so a token that splits a character changes nothing here.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.structured.spec import OutputSpec

END = b""
"""What :meth:`JsonBudget.instead_of` returns to end the reply here."""

_QUOTE, _BACKSLASH, _COMMA, _NEWLINE = b'"'[0], b"\\"[0], b","[0], b"\n"[0]
_CLOSE_FOR = {b"{"[0]: b"}", b"["[0]: b"]"}
_CLOSERS = frozenset(b"}]")
_WHITESPACE = b" \t\r\n"


def need(longest: int, open_levels: int) -> int:
    """Tokens that must be left to start another element: one as long as the longest
    so far (with a quarter more, as elements vary), a bracket for each open level, and
    room for the end of the turn (a reply whose last token reaches the limit counts as
    cut off, even when that token closed it)."""
    return longest + longest // 4 + open_levels + 2


@dataclass
class _Level:
    opener: int
    start: int
    """The token in which the level's current element began (its opening bracket or the
    comma before it)."""


@dataclass
class _Read:
    offset: int
    """Where in the token the comma is."""
    depth: int
    opener: int
    current: int
    """Tokens the element that the comma ends took."""


class JsonBudget:
    """Where a JSON reply stands: open brackets, inside a string or not, and how many
    tokens each level's elements took."""

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self.used = 0
        """Tokens emitted so far."""
        self.complete = False
        """The top-level value is finished: nothing but whitespace may follow."""
        self._levels: list[_Level] = []
        self._in_string = False
        self._escaped = False
        self._longest: dict[int, int] = {}
        """The most tokens an element took, by nesting depth."""

    def accept(self, piece: bytes) -> None:
        """The token that was emitted."""
        self._read(piece, commit=True)
        self.used += 1

    def instead_of(self, piece: bytes) -> bytes | None:
        """What to emit rather than ``piece``: None for ``piece`` itself; :data:`END` to
        end the reply; else the bytes wanted next (``piece`` up to its comma, then the
        bracket that closes that level), of which the sampler emits a first token."""
        if self.complete:
            return END
        comma = self._read(piece, commit=False)
        if comma is None:
            return None
        longest = max(self._longest.get(comma.depth, 0), comma.current)
        if self.max_tokens - self.used >= need(longest, comma.depth):
            return None
        return piece[:comma.offset].rstrip(_WHITESPACE) + _CLOSE_FOR[comma.opener]

    def _read(self, piece: bytes, commit: bool) -> _Read | None:
        """Read ``piece`` on from the current state; its first comma outside strings, if
        any. ``commit``: keep the state it leaves and the element lengths it ends."""
        token = self.used + 1
        levels = self._levels if commit else [_Level(lv.opener, lv.start)
                                              for lv in self._levels]
        in_string, escaped, complete = self._in_string, self._escaped, self.complete
        first: _Read | None = None
        for offset, byte in enumerate(piece):
            if in_string:
                if escaped:
                    escaped = False
                elif byte == _BACKSLASH:
                    escaped = True
                elif byte == _QUOTE:
                    in_string, complete = False, not levels
            elif byte == _QUOTE:
                in_string = True
            elif byte in _CLOSE_FOR:
                levels.append(_Level(byte, token))
            elif byte in _CLOSERS and levels:
                self._measure(levels, token, commit)
                levels.pop()
                complete = not levels
            elif byte == _COMMA and levels:
                level = levels[-1]
                if first is None:
                    first = _Read(offset, len(levels), level.opener, token - level.start)
                self._measure(levels, token, commit)
                level.start = token
        if commit:
            self._in_string, self._escaped, self.complete = in_string, escaped, complete
        return first

    def _measure(self, levels: list[_Level], token: int, commit: bool) -> None:
        if commit:
            depth = len(levels)
            taken = token - levels[-1].start
            self._longest[depth] = max(self._longest.get(depth, 0), taken)


class ListBudget:
    """Where a list reply stands: at the start of a line or not, and how many tokens
    each item took."""

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self.used = 0
        self.complete = False
        """Never: a list may always take one more item; the budget decides."""
        self._line_start = True
        self._items = 0
        self._item_start = 1
        self._longest = 0

    def accept(self, piece: bytes) -> None:
        token = self.used + 1
        for byte in piece:
            if byte == _NEWLINE:
                if not self._line_start:
                    self._items += 1
                    self._longest = max(self._longest, token - self._item_start + 1)
                self._line_start = True
            elif self._line_start:
                self._item_start = token
                self._line_start = False
        self.used = token

    def instead_of(self, piece: bytes) -> bytes | None:
        """None to emit ``piece``; :data:`END` to end the reply before another item;
        else ``piece`` up to the end of the item it finishes."""
        if not self._items or not piece:
            return None
        line_start = self._line_start
        for offset, byte in enumerate(piece):
            if line_start and byte != _NEWLINE:
                if self.max_tokens - self.used >= need(self._longest, 0):
                    return None
                return piece[:offset]
            line_start = byte == _NEWLINE
        return None


Budget = JsonBudget | ListBudget


def budget_for(spec: OutputSpec, max_tokens: int) -> Budget | None:
    """The plan for a reply constrained to ``spec`` (None for code: see above)."""
    if spec.format == "json":
        return JsonBudget(max_tokens)
    if spec.format == "list":
        return ListBudget(max_tokens)
    return None
