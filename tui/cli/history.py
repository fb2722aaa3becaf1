"""``kvchat history`` and ``kvchat export``: read the conversation store."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

from engine.errors import KvchatError
from engine.store import Store
from tui.cli import EXIT_OK


def run_history(args: argparse.Namespace) -> int:
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
        print(f"{row.id:>5}  {when:16}  {row.message_count:>4}  {row.title}")
    return EXIT_OK


def run_export(args: argparse.Namespace) -> int:
    with Store.open_default() as store:
        if args.format == "json":
            text = json.dumps(store.export_json(args.id), indent=2, ensure_ascii=False) + "\n"
        else:
            text = store.export_markdown(args.id)
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
