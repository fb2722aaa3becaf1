"""Listening, guarding and stopping: the socket (bound before the model loads, so a
port in use is one line at once), the bearer key and the loopback host check in
front of every route, uvicorn on the socket, and a stop that drains.

A stop (SIGINT or SIGTERM) closes the listener, refuses every reply still waiting
(``server_closing``), lets the replies in flight finish for up to ``drain_s`` seconds,
cancels what remains, and returns: the command then exits 0.
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import ipaddress
import json
import logging
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn
from pydantic import SecretStr
from starlette.requests import ClientDisconnect

from engine.errors import KvchatError
from engine.serve.app import build_routes
from engine.serve.errors import error_body
from engine.serve.hub import SharedEngine

log = logging.getLogger("kvchat.serve")

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


class ListenError(KvchatError):
    """The address cannot be listened on: the port is taken, or the address is not
    this machine's."""

    code = "listen"
    usage = True


def is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host``:``port`` (0: any free port). Raises ListenError."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(f"cannot listen on {host}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ListenError(f"port {port} on {host} is in use (another server is "
                              "listening there): choose another with --port") from None
        raise ListenError(f"cannot listen on {host} port {port}: {exc.strerror}") from None
    return sock


def bound_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


class Guard:
    """In front of every route: the bearer key, compared in constant time, when one is
    set; on a loopback server without one, a Host header that names this machine (a
    web page that rebinds its own name to 127.0.0.1 cannot use the model); and any
    failure inside logged as one line, answered with a JSON 500 if nothing was sent."""

    def __init__(self, app: Any, key: SecretStr | None, loopback: bool) -> None:
        self.app = app
        self._key = key.get_secret_value().encode() if key is not None else None
        self._check_host = loopback and key is None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if self._key is not None and not self._authorized(headers.get(b"authorization", b"")):
            await _send_json(send, 401, error_body(
                "a valid API key is needed: send Authorization: Bearer KEY",
                "invalid_api_key", 401), [(b"www-authenticate", b"Bearer")])
            return
        if self._check_host and not is_loopback(_host_name(headers.get(b"host", b""))):
            await _send_json(send, 421, error_body(
                "this server answers only requests addressed to this machine's loopback "
                "name (127.0.0.1, localhost)", "bad_host", 421))
            return
        started = False

        async def tracked(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except (ClientDisconnect, OSError):
            pass  # the client left: there is no one to answer
        except Exception as exc:
            log.error("%s %s failed: %s: %s", scope.get("method"), scope.get("path"),
                      type(exc).__name__, exc)
            if not started:
                await _send_json(send, 500, error_body(
                    f"internal error: {type(exc).__name__}", "internal", 500))

    def _authorized(self, header: bytes) -> bool:
        scheme, _, token = header.partition(b" ")
        assert self._key is not None
        # compare_digest on the whole token: the time taken says nothing of the key.
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self._key)


def _host_name(host: bytes) -> str:
    text = host.decode("latin-1")
    if text.startswith("["):
        return text[1:text.find("]")] if "]" in text else text
    return text.rsplit(":", 1)[0] if text.count(":") == 1 else text


async def _send_json(send: Any, status: int, body: dict[str, Any],
                     headers: list[tuple[bytes, bytes]] | None = None) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
        *(headers or [])]})
    await send({"type": "http.response.body", "body": data})


class _Server(uvicorn.Server):
    """uvicorn, told when a stop begins (to refuse waiting replies before it drains
    those in flight), and without raising the stop's signal again once drained: a stop
    that was asked for is a clean exit."""

    def __init__(self, config: uvicorn.Config, on_stop: Callable[[], None],
                 on_ready: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_stop = on_stop
        self._on_ready = on_ready

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self._on_ready()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._on_stop()
        await super().shutdown(sockets)


async def run_server(hub: SharedEngine, sock: socket.socket, *, key: SecretStr | None,
                     drain_s: float, on_ready: Callable[[], None]) -> None:
    """Serve ``hub`` on ``sock`` until SIGINT or SIGTERM, then drain and return."""
    host = sock.getsockname()[0]
    app = Guard(build_routes(hub), key, loopback=is_loopback(host))
    config = uvicorn.Config(app, lifespan="off", http="h11", log_config=None,
                            log_level="warning", access_log=False,
                            timeout_graceful_shutdown=drain_s, timeout_keep_alive=5)
    await _Server(config, hub.stop, on_ready).serve(sockets=[sock])
