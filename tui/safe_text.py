"""Text from a model, a user, a stored conversation or a model file's metadata is shown,
never executed: what a terminal would act on is written out as a visible escape.

A terminal acts on control characters (ESC starts the sequences that set the window
title, clear the screen or move the cursor; the C1 controls, U+0080-U+009F, do the same
in one character on some terminals; backspace and carriage return overwrite what was
shown) and on the bidirectional overrides and isolates (U+202A-U+202E, U+2066-U+2069),
which reorder what follows on the line. Each becomes the escape Python would write for
it (``\\x1b``, ``\\x9b``, ``\\u202e``), so the text reads as it is stored, every
character accounted for. A line feed and a tab are kept; a carriage return is dropped
(a Windows line end stays a line end, and text after a lone one stays beside the text
before it instead of overwriting it). A lone surrogate (bytes that were not UTF-8,
kept by ``surrogateescape``) is escaped too: a terminal's encoder would refuse it.

Every face that writes such text to a terminal goes through this module: the app's
widgets and notifications, and the CLI where its output is a terminal. Files keep the
text as stored, and JSON keeps it, escaped by JSON itself (see :func:`json_line`).
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from pydantic import BaseModel

_ACTING = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
"""The C0 and C1 controls and DEL (Unicode's Cc, a fixed set), the bidi embeddings,
overrides and isolates, and the surrogates."""


def visible(text: str, keep: str = "") -> str:
    """``text`` with every character a terminal acts on written as a visible escape, but
    line feeds, tabs and the characters in ``keep``; carriage returns are dropped."""
    if not _ACTING.search(text):
        return text

    def escape(match: re.Match[str]) -> str:
        ch = match.group()
        if ch in "\n\t" or ch in keep:
            return ch
        return "" if ch == "\r" else repr(ch)[1:-1]

    return _ACTING.sub(escape, text)


def one_line(text: str, keep: str = "") -> str:
    """:func:`visible`, with every run of white space (line ends, tabs) one space: for
    lists and tables, where a row is one line."""
    return " ".join(visible(text, keep).split())


_JSON_ACTING = re.compile("[\u007f-\u009f\u202a-\u202e\u2066-\u2069]")


def json_text(text: str) -> str:
    """JSON text (as :func:`json.dumps` with ``ensure_ascii=False`` or pydantic writes it)
    with the characters JSON leaves raw that a terminal would act on (DEL, the C1
    controls, the bidi overrides) written as ``\\u`` escapes: the same JSON value.
    JSON escapes the C0 controls itself, and a raw one can only sit inside a string, where
    the escape means the same character."""
    return _JSON_ACTING.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def json_dumps(value: Any, indent: int | None = 2) -> str:
    """``value`` as JSON for a terminal or a pipe: non-ASCII text kept readable, what a
    terminal would act on escaped (:func:`json_text`)."""
    return json_text(json.dumps(value, indent=indent, ensure_ascii=False))


Model = TypeVar("Model", bound="BaseModel")


def visible_fields(model: Model) -> Model:
    """A copy of ``model`` (an event from the engine) whose text fields, and lists of
    text, are :func:`visible`: a model's name and its template's note come from the
    model file, a remote's name from a server. ``model`` itself where nothing changes."""
    update: dict[str, Any] = {}
    for name, value in model:
        if isinstance(value, str) and value != (shown := visible(value)):
            update[name] = shown
        elif isinstance(value, list) and value != (
                shown_list := [visible(v) if isinstance(v, str) else v for v in value]):
            update[name] = shown_list
    return model.model_copy(update=update) if update else model
