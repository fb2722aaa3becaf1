"""``kvchat retries``: structured replies that needed more than one attempt, and each
attempt of one of them with what changed between attempts."""

from __future__ import annotations

import argparse
import difflib
from datetime import datetime
from typing import Any

from engine.errors import KvchatError
from engine.store import AttemptRow, Store
from tui.cli import EXIT_OK
from tui.safe_text import json_dumps, one_line, visible


class NoSuchReply(KvchatError):
    code = "not_found"
    usage = True


def add_retries_parser(commands: Any, positive: Any) -> None:
    retries = commands.add_parser(
        "retries", help="review structured replies that were retried",
        description="List structured replies that took more than one attempt or failed; "
                    "`retries show ID` prints one reply's attempts in order.")
    retries.add_argument("--json", action="store_true", help="machine-readable output")
    retries.add_argument("--limit", type=positive, metavar="N", help="show the newest N")
    sub = retries.add_subparsers(dest="retries_command", metavar="show")
    show = sub.add_parser("show", help="every attempt of one reply")
    show.add_argument("id", type=positive, metavar="ID", help="the reply's id (first column)")
    show.add_argument("--json", action="store_true", help="machine-readable output")


def run_retries(args: argparse.Namespace) -> int:
    with Store.open_default() as store:
        if getattr(args, "retries_command", None) == "show":
            attempts = store.attempts(args.id)
            if not attempts:
                raise NoSuchReply(f"reply {args.id} has no checked attempts "
                                  "(`kvchat retries` lists the ids)")
            return _show(attempts, args.json)
        rows = store.retried_replies(limit=args.limit)
    if args.json:
        print(json_dumps([row.model_dump() for row in rows]))
        return EXIT_OK
    if not rows:
        print("no retried replies yet: ask for one with `kvchat ask --format json ...`")
        return EXIT_OK
    print(f"{'ID':>5}  {'WHEN':16}  {'TRIES':>5}  {'RESULT':6}  STEPS / PROMPT")
    for row in rows:
        when = datetime.fromtimestamp(row.created_at).strftime("%Y-%m-%d %H:%M")
        result = "ok" if row.ok else "FAILED"
        steps = " > ".join(s.replace("_", " ") for s in row.strategies)
        print(f"{row.message_id:>5}  {when:16}  {row.attempts:>5}  {result:6}  {steps}")
        print(f"{'':>38}{_clip(row.prompt, 70)}")
    return EXIT_OK


def _show(attempts: list[AttemptRow], as_json: bool) -> int:
    if as_json:
        print(json_dumps([a.model_dump() for a in attempts]))
        return EXIT_OK
    previous: AttemptRow | None = None
    for a in attempts:
        verdict = "ok" if a.ok else a.cut_off_note or "malformed"
        print(f"── attempt {a.number}: {a.strategy.replace('_', ' ')} · {a.format} · {verdict}"
              f" · {one_line(a.found)} · {a.completion_tokens} tokens · {a.elapsed_s:.2f} s")
        if a.prompt_change:
            print("prompt added:")
            print(_indent(a.prompt_change))
        for error in a.errors:
            print(f"error: {one_line(error)}")
        if previous is None:
            print("text:")
            print(_indent(a.content))
        else:
            print(f"text, changes from attempt {previous.number}:")
            print(_indent(diff(previous.content, a.content)))
        previous = a
    return EXIT_OK


def diff(before: str, after: str) -> str:
    """A unified diff of two attempts' texts, or the note that they are the same."""
    lines = list(difflib.unified_diff(before.splitlines(), after.splitlines(),
                                      "before", "after", lineterm="", n=2))
    return "\n".join(lines[2:]) if lines else "(same text)"


def _indent(text: str) -> str:
    """Indented, what a terminal would act on escaped: attempts are a model's text."""
    return "\n".join(f"  {line}" for line in (visible(text).splitlines() or [""]))


def _clip(text: str, width: int) -> str:
    line = one_line(text)
    return line if len(line) <= width else line[: width - 1] + "…"
