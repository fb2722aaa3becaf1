"""``kvchat`` with no command: the Textual app."""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.routing.service import RouteService
from engine.store import Store
from tui.cli import EXIT_OK
from tui.cli.backend import make_engine
from tui.cli.options import resolve_config
from tui.cli.route import pinned_sampling
from tui.ui_priority import spare_a_core


def run_tui(args: argparse.Namespace) -> int:
    config = spare_a_core(resolve_config(args))
    # A missing API key variable fails here, in the shell.
    engine = make_engine(config, for_app=True)
    if config.backend.kind == "local":
        from engine.model.gguf_header import read_gguf_header
        from engine.model.loader import bundled_model_path

        # Check the file before the screen takes over the terminal: a bad path is a
        # one-line error in the shell, not a dialog.
        read_gguf_header(config.model.path or bundled_model_path())
    from tui.app import KvchatApp

    with Store.open_default() as store:
        store.recover_interrupted()
        if args.conversation is not None:
            store.get_conversation(args.conversation)
        routes = RouteService.from_config(config, Path(args.config) if args.config else None)
        if args.route is not None:
            routes.check_route(args.route)
        app = KvchatApp(config, engine, store, conversation_id=args.conversation,
                        routes=routes, route=args.route, pinned=pinned_sampling(args),
                        yield_cpu=True)
        app.run()
    return app.return_code or EXIT_OK
