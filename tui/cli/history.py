"""``kvchat history`` and ``kvchat export``: read the conversation store."""

from __future__ import annotations

import argparse
import json
import sys
import unicodedata
from datetime import datetime
from pathlib import Path
from typing import Any

from engine.errors import KvchatError
from engine.store import MessageRow, Store
from tui.cli import EXIT_OK

_TEXT_WIDTH = 64


def run_history(args: argparse.Namespace) -> int:
    if args.id is not None:
        return _show_conversation(args)
    with Store.open_default() as store:
        rows = store.list_conversations(limit=args.limit)
    if args.json:
        print(json.dumps([row.model_dump() for row in rows], indent=2))
        return EXIT_OK
    if not rows:
        print("no conversations yet: start one with `kvchat` or `kvchat ask`")
        return EXIT_OK
    print(f"{'ID':>5}  {'UPDATED':16}  {'MSGS':>4}  TITLE")
    for row in rows:
        when = datetime.fromtimestamp(row.updated_at).strftime("%Y-%m-%d %H:%M")
        print(f"{row.id:>5}  {when:16}  {row.message_count:>4}  {terminal_safe(row.title)}")
    return EXIT_OK


def _show_conversation(args: argparse.Namespace) -> int:
    """The path shown, one message a line with its id, and where a message has
    siblings (edits, other replies), which of them it is."""
    with Store.open_default() as store:
        conv = store.get_conversation(args.id)
        rows = store.messages(args.id)
        forks = [store.siblings(row.id) for row in rows]
    if args.limit is not None:
        rows, forks = rows[-args.limit:], forks[-args.limit:]
    if args.json:
        data: dict[str, Any] = conv.model_dump()
        data["messages"] = [{**row.model_dump(), "siblings": [s.id for s in siblings],
                             "sibling_index": index}
                            for row, (siblings, index) in zip(rows, forks, strict=True)]
        print(json.dumps(data, indent=2, ensure_ascii=False))
        return EXIT_OK
    print(f"conversation {conv.id}: {terminal_safe(conv.title)} "
          f"({len(rows)} messages shown, {conv.message_count} stored)")
    print(f"{'ID':>6}  {'ROLE':9}  TEXT")
    for row, (siblings, index) in zip(rows, forks, strict=True):
        fork = ""
        if len(siblings) > 1:
            kind = "version" if row.role == "user" else "reply"
            fork = f"  [{kind} {index + 1} of {len(siblings)}]"
        print(f"{row.id:>6}  {row.role:9}  {_gist(row)}{fork}")
    return EXIT_OK


def _gist(row: MessageRow) -> str:
    text = " ".join(terminal_safe(row.content).split())
    if len(text) > _TEXT_WIDTH:
        text = text[: _TEXT_WIDTH - 1] + "…"
    return text + ("" if row.status == "complete" else f" ({row.status})")


def terminal_safe(text: str, keep: str = "") -> str:
    """``text`` without what a terminal would act on: control characters (escape
    sequences start with one) and the bidirectional overrides that reorder a line,
    but for those in ``keep``. Tabs and line ends become spaces."""
    return "".join(" " if ch in "\t\n\r" else ch for ch in text
                   if ch in "\t\n\r" or ch in keep or not _acts(ch))


def _acts(ch: str) -> bool:
    category = unicodedata.category(ch)
    return category == "Cc" or (category == "Cf" and unicodedata.bidirectional(ch) in
                                {"LRE", "RLE", "LRO", "RLO", "PDF", "LRI", "RLI", "FSI",
                                 "PDI"})


def run_export(args: argparse.Namespace) -> int:
    with Store.open_default() as store:
        if args.format == "json":
            data = store.export_json(args.id, all_branches=args.all_branches)
            text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
        else:
            text = store.export_markdown(args.id, all_branches=args.all_branches)
    if args.output:
        path = Path(args.output).expanduser()
        try:
            path.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise ExportError(f"cannot write {path}: {exc.strerror}") from None
        print(f"wrote conversation {args.id} to {path}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return EXIT_OK


class ExportError(KvchatError):
    code = "export"
    usage = True
