"""What ``kvchat`` (the app) and ``kvchat ask`` do before the first prompt, in one
order: the config, the store (replies a crash interrupted marked so), the
conversation and route asked for, the route service and the engine, not started.

Every mistake a person can make on the command line fails here, in the shell,
before a model loads or a screen takes over the terminal.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from engine.api import ChatEngine
from engine.backends.factory import make_engine
from engine.config import KvchatConfig
from engine.routing.service import RouteService
from engine.store import Store
from tui.cli.options import config_path, pinned_sampling, resolve_config
from tui.config import ui_settings
from tui.safe_text import visible
from tui.ui_priority import spare_a_core


@dataclass(frozen=True)
class StartUp:
    """What a command that chats needs, ready."""

    config: KvchatConfig
    """The config with the options laid over it (for the app, as
    :func:`~tui.ui_priority.spare_a_core` leaves it)."""
    store: Store
    routes: RouteService
    engine: ChatEngine
    """Not started: the caller starts and closes it."""
    pinned: set[str]
    """Sampling fields set on the command line (see :func:`pinned_sampling`)."""


@contextmanager
def start_up(args: argparse.Namespace, *, app: bool) -> Iterator[StartUp]:
    """Everything a chatting command needs, the store open while the block runs.

    ``app``: for the Textual app, which spares a core for its screen, runs the local
    model in a process of its own where ``ui.engine_process`` says so, checks the model
    file before the screen takes over, and shows the routes' template problems itself;
    otherwise they go to stderr as warnings. Raises a KvchatError for any mistake.
    """
    config = resolve_config(args)
    if app:
        config = spare_a_core(config)
    with Store.open_default() as store:
        store.recover_interrupted()
        if args.conversation is not None:
            store.get_conversation(args.conversation)  # fail before loading the model
        routes = route_service(config, args, warn=not app)
        if args.route is not None:
            routes.check_route(args.route)  # likewise
        # A missing API key variable fails here too.
        own_process = app and ui_settings(config).engine_process
        engine = make_engine(config, own_process=own_process)
        if app and config.backend.kind == "local":
            _check_model_file(config)
            if not own_process:  # the app loads the model itself: an abort would end it
                asyncio.run(check_first_load(config))
        yield StartUp(config, store, routes, engine, pinned_sampling(args))


def route_service(config: KvchatConfig, args: argparse.Namespace, *,
                  warn: bool) -> RouteService:
    """The route service of ``config`` and the templates beside the config file;
    ``warn``: each template that could not be read is a warning on stderr."""
    routes = RouteService.from_config(config, config_path(args))
    if warn:
        for problem in routes.templates.problems:
            print(f"kvchat: warning: {visible(problem)}", file=sys.stderr)
    return routes


def _check_model_file(config: KvchatConfig) -> None:
    """A bad model path, or a model that does not fit the budget the user set, is a
    one-line error in the shell, not a dialog in the app."""
    from engine.errors import ModelDoesNotFit
    from engine.model.bundled import default_model_path
    from engine.model.gguf_header import read_gguf_header
    from engine.model.loader import does_not_fit, plan_for
    from engine.model.memory.layout import UnplannableModel

    header = read_gguf_header(config.model.path or default_model_path())
    if config.model.memory_budget is None:
        return
    try:
        plan = plan_for(config.model, header)
    except UnplannableModel:
        return
    if not plan.fits:
        raise ModelDoesNotFit(does_not_fit(header.name, plan))


async def check_first_load(config: KvchatConfig) -> None:
    """For ``kvchat ask`` (and the app with ``ui.engine_process`` off), which load the
    local model in their own process: a file not loaded before is loaded once in an
    engine process first, so that an abort inside llama.cpp is a one-line
    ModelFileError (exit 2) rather than the end of this one
    (engine/backends/process/preflight.py)."""
    if config.backend.kind != "local":
        return
    from engine.backends.process.preflight import check_load
    from engine.model.bundled import default_model_path
    from engine.store import default_data_dir

    path = Path(config.model.path) if config.model.path else default_model_path()
    await check_load(config.model, config.kv, config.speculative, path, default_data_dir())
