"""``kvchat`` with no command: the Textual app."""

from __future__ import annotations

import argparse

from engine.session import ChatSession
from tui.cli import EXIT_OK
from tui.cli.startup import start_up


def run_tui(args: argparse.Namespace) -> int:
    with start_up(args, app=True) as ready:
        from tui.app import KvchatApp

        session = ChatSession.for_config(ready.engine, ready.store, ready.config, ready.routes)
        app = KvchatApp(ready.config, ready.engine, ready.store,
                        conversation_id=args.conversation, session=session,
                        route=args.route, pinned=ready.pinned, yield_cpu=True)
        app.run()
    return app.return_code or EXIT_OK
