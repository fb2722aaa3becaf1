"""``kvchat serve``: the local model loaded once and shared over HTTP by every client:
the app (``kvchat --base-url``), ``kvchat ask``, any OpenAI client.

The port is taken before the model loads, so a port in use or an address that needs
a key is one line at once (exit 2). The key is read from the variable that
``--api-key-env`` names, and never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from pydantic import SecretStr, ValidationError

from engine.backends.factory import make_local_engine
from engine.config import KvchatConfig, ServeConfig, describe_validation_error
from engine.errors import ConfigError
from engine.serve.hub import SharedEngine
from engine.serve.server import bind, bound_url, is_loopback, run_server
from tui.cli import EXIT_OK
from tui.cli.options import resolve_config

# option dest -> [serve] key; the key's dest differs from the backend's --api-key-env
_SERVE_OPTIONS = {"host": "host", "port": "port", "max_queue": "max_queue",
                  "serve_key_env": "api_key_env", "drain": "drain_s"}


def add_serve_parser(commands: Any, positive: Callable[[str], int],
                     non_negative: Callable[[str], int]) -> None:
    serve = commands.add_parser(
        "serve", help="share one loaded model over HTTP (OpenAI API and kvchat's events)",
        description="Load the model once and serve it on 127.0.0.1: OpenAI's "
                    "/v1/chat/completions and /v1/models, kvchat's typed event stream "
                    "(the app and kvchat ask attach with --base-url URL/v1), and /health. "
                    "Replies run one at a time; the rest wait in a queue. Ctrl+C stops "
                    "after the replies in flight end.")
    group = serve.add_argument_group("server (default: the config's [serve])")
    group.add_argument("--host", metavar="ADDR",
                       help="address to listen on (default 127.0.0.1); any other than "
                            "loopback needs --api-key-env")
    group.add_argument("--port", metavar="N", type=non_negative,
                       help="TCP port (default 8411; 0 takes a free one)")
    group.add_argument("--max-queue", metavar="N", type=non_negative,
                       help="replies that may wait for the model; more get HTTP 429 "
                            "(default 16)")
    group.add_argument("--api-key-env", metavar="NAME", dest="serve_key_env",
                       help="environment variable holding the key every request must "
                            "send as Authorization: Bearer KEY")
    group.add_argument("--drain", metavar="S", type=non_negative,
                       help="seconds a stop waits for replies in flight (default 30)")
    model = serve.add_argument_group("model and default sampling")
    suppress = argparse.SUPPRESS
    model.add_argument("--model", metavar="PATH|NAME", default=suppress,
                       help="GGUF file to serve, or a name `kvchat models` lists")
    model.add_argument("--config", metavar="PATH", default=suppress, help="config file")
    model.add_argument("--ctx", metavar="N", type=positive, default=suppress,
                       help="context size in tokens")
    model.add_argument("--parallel", metavar="N", type=positive, default=suppress,
                       help="replies decoded together in one batch, shared by every "
                            "client (default 1: one at a time, the rest queued)")
    model.add_argument("--kv-layout", choices=["shared", "split"], default=suppress,
                       help="with --parallel: one pool of cells (shared) or ctx / N each "
                            "(split, as llama.cpp's server slots)")
    model.add_argument("--kv-type", choices=["auto", "f16", "q8_0", "q4_0"], default=suppress)
    model.add_argument("--budget", metavar="SIZE", default=suppress,
                       help="memory the model may use, e.g. 36GiB")
    model.add_argument("--speculative", choices=["auto", "prompt-lookup", "draft", "off"],
                       default=suppress)
    model.add_argument("--max-tokens", metavar="N", type=positive, default=suppress,
                       help="most tokens in a reply whose request names none")


def serve_settings(config: KvchatConfig, args: argparse.Namespace) -> ServeConfig:
    """``[serve]`` with the options laid over it. Raises ConfigError."""
    data = config.serve.model_dump()
    given = {key: getattr(args, dest) for dest, key in _SERVE_OPTIONS.items()
             if getattr(args, dest, None) is not None}
    try:
        return ServeConfig.model_validate({**data, **given})
    except ValidationError as exc:
        message = describe_validation_error(exc)
        key, _, problem = message.partition(":")
        flags = {"serve_key_env": "api_key_env"}
        option = next((d for d, k in _SERVE_OPTIONS.items() if k == key and k in given), None)
        where = (f"option --{flags.get(option, option).replace('_', '-')}" if option
                 else f"serve.{key}")
        raise ConfigError(f"{where}:{problem}") from None


def api_key(settings: ServeConfig) -> SecretStr | None:
    """The key from the variable ``api_key_env`` names; required off loopback."""
    if settings.api_key_env is None:
        if not is_loopback(settings.host):
            raise ConfigError(f"listening on {settings.host} lets other machines in: it "
                              "needs a key, --api-key-env NAME (a variable that holds it)")
        return None
    value = os.environ.get(settings.api_key_env, "")
    if not value.strip():
        raise ConfigError(f"the API key variable {settings.api_key_env} is not set or empty")
    return SecretStr(value.strip())


def run_serve(args: argparse.Namespace) -> int:
    config = resolve_config(args)
    settings = serve_settings(config, args)
    key = api_key(settings)
    sock = bind(settings.host, settings.port)
    try:
        return asyncio.run(_serve(config, settings, key, sock))
    finally:
        sock.close()


async def _serve(config: KvchatConfig, settings: ServeConfig, key: SecretStr | None,
                 sock: Any) -> int:
    _log_to_stderr()
    engine = make_local_engine(config)
    try:
        info = await engine.start()
        hub = SharedEngine(engine, max_queue=settings.max_queue, sampling=config.sampling)
        url = bound_url(sock)

        def ready() -> None:
            keyed = "; requests need the key" if key is not None else ""
            _say(f"{info.name} on {url}/v1 (OpenAI API; attach with kvchat --base-url "
                 f"{url}/v1), health at {url}/health, queue {settings.max_queue}{keyed}; "
                 "Ctrl+C stops")

        await run_server(hub, sock, key=key, drain_s=settings.drain_s, on_ready=ready)
        counts = hub.counters
        _say(f"stopped: {counts.served} replies served, {counts.cancelled} cancelled, "
             f"{counts.failed} failed, {counts.refused} refused")
    finally:
        await engine.close()
    return EXIT_OK


def _say(line: str) -> None:
    print(f"kvchat serve: {line}", file=sys.stderr, flush=True)


def _log_to_stderr() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("kvchat serve: %(message)s"))
    for name, level in (("kvchat.serve", logging.INFO), ("uvicorn.error", logging.WARNING)):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False
