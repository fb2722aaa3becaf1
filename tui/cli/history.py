"""``kvchat history`` and ``kvchat export``: read the conversation store."""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from engine.errors import KvchatError
from engine.files.atomic import atomic_write
from engine.store import MessageRow, Store
from tui.cli import EXIT_OK
from tui.safe_text import json_dumps, json_text, one_line, visible

_TEXT_WIDTH = 64


def run_history(args: argparse.Namespace) -> int:
    if args.id is not None:
        return _show_conversation(args)
    with Store.open_default() as store:
        rows = store.list_conversations(limit=args.limit)
    if args.json:
        print(json_dumps([row.model_dump() for row in rows]))
        return EXIT_OK
    if not rows:
        print("no conversations yet: start one with `kvchat` or `kvchat ask`")
        return EXIT_OK
    print(f"{'ID':>5}  {'UPDATED':16}  {'MSGS':>4}  TITLE")
    for row in rows:
        when = datetime.fromtimestamp(row.updated_at).strftime("%Y-%m-%d %H:%M")
        print(f"{row.id:>5}  {when:16}  {row.message_count:>4}  {one_line(row.title)}")
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
        print(json_dumps(data))
        return EXIT_OK
    print(f"conversation {conv.id}: {one_line(conv.title)} "
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
    text = one_line(row.content)
    if len(text) > _TEXT_WIDTH:
        text = text[: _TEXT_WIDTH - 1] + "…"
    return text + ("" if row.status == "complete" else f" ({row.status})")


def run_export(args: argparse.Namespace) -> int:
    with Store.open_default() as store:
        target = _export_target(args, store.path) if args.output else None
        if args.format == "json":
            data = store.export_json(args.id, all_branches=args.all_branches)
            text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
        else:
            text = store.export_markdown(args.id, all_branches=args.all_branches)
    if target is not None:
        try:
            atomic_write(target, text)  # a new file 0600; one replaced keeps its mode
        except OSError as exc:
            raise ExportError(f"cannot write {target}: {exc.strerror or exc}") from None
        print(f"wrote conversation {args.id} to {visible(str(target))}", file=sys.stderr)
    elif sys.stdout.isatty():
        # A terminal shows the text; a pipe or a file gets it as stored.
        sys.stdout.write(json_text(text) if args.format == "json" else visible(text))
    else:
        sys.stdout.write(text)
    return EXIT_OK


def _export_target(args: argparse.Namespace, store_path: Path) -> Path:
    """Where ``-o`` writes: never over the store or its -wal, -shm or journal files;
    over another existing file only with ``--force``."""
    path = Path(args.output).expanduser()
    resolved = path.resolve()
    store = store_path.resolve()
    if any(_same(resolved, f) for f in (store, *(store.with_name(store.name + s)
                                                for s in ("-wal", "-shm", "-journal")))):
        raise ExportError(f"{visible(str(path))} is the conversation store itself: "
                          "choose another file")
    if resolved.is_dir():
        raise ExportError(f"{visible(str(path))} is a directory: name the file to write")
    if resolved.exists() and not args.force:
        raise ExportError(f"{visible(str(path))} exists: --force replaces it")
    if not resolved.parent.is_dir():
        raise ExportError(f"cannot write {visible(str(path))}: no directory "
                          f"{visible(str(path.parent))}")
    return path


def _same(path: Path, other: Path) -> bool:
    """The same file: by name, or (a hard link) by inode."""
    if path == other:
        return True
    try:
        return os.path.samefile(path, other)
    except OSError:  # either is missing
        return False


class ExportError(KvchatError):
    code = "export"
    usage = True
