"""``kvchat search``: stored messages and titles that match, best first."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from engine.store import SearchHit, Store
from tui.cli import EXIT_OK
from tui.safe_text import json_dumps, one_line

_MARKS = ("\x02", "\x03")
"""Control characters mark the matches: every other one is escaped (tui.safe_text), so
whatever a stored message holds, only these become highlighting."""
_BOLD = ("\x1b[1m", "\x1b[22m")


def add_search_parser(commands: Any, positive: Callable[[str], int]) -> None:
    search = commands.add_parser(
        "search", help="full-text search over every stored message and title",
        description="Find stored messages (on every branch) and conversation titles with "
                    "every word of QUERY; the last word also matches as a prefix. The "
                    "query is plain words: quotes, AND, -x or * are searched for as text.")
    search.add_argument("query", metavar="QUERY", help="the words to find")
    search.add_argument("--json", action="store_true", help="machine-readable output")
    search.add_argument("--limit", type=positive, metavar="N", default=20,
                        help="at most N hits (default 20)")


def run_search(args: argparse.Namespace) -> int:
    with Store.open_default() as store:
        if store.search_mode == "like":
            print("kvchat: note: this SQLite has no FTS5: searching with LIKE "
                  "(no ranking, newest first)", file=sys.stderr)
        hits = store.search(args.query, args.limit,
                            marks=("[", "]") if args.json else _MARKS)
    if args.json:
        print(json_dumps([hit.model_dump() for hit in hits]))
        return EXIT_OK
    if not hits:
        print(f"nothing stored matches '{one_line(args.query)}'", file=sys.stderr)
        return EXIT_OK
    marks = _BOLD if sys.stdout.isatty() else ("[", "]")
    for hit in hits:
        print(_heading(hit))
        snippet = one_line(hit.snippet, keep="".join(_MARKS))
        print("    " + snippet.replace(_MARKS[0], marks[0]).replace(_MARKS[1], marks[1]))
    return EXIT_OK


def _heading(hit: SearchHit) -> str:
    where = "title" if hit.message_id is None else f"message {hit.message_id} ({hit.role})"
    return f"conversation {hit.conversation_id} · {where} · " \
        f"{one_line(hit.conversation_title)}"
