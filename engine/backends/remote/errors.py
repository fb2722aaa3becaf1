"""What goes wrong talking to an HTTP server, as one line a person can act on.

httpx raises a different exception for each way a request fails; :func:`describe`
turns them (and HTTP error statuses) into :class:`~engine.errors.KvchatError`s with
stable codes. At ``start`` they are ``ModelLoadError``s, as the engine API documents;
during a reply the engine sends the same code and message as an ``Error`` event.
Messages name the URL but never a header: the API key is not in them, and a user and
password in a URL (``http://user:pw@host``) show as ``***``.
"""

from __future__ import annotations

import json
import os

import httpx

from engine.config import redact_userinfo as redact_url
from engine.errors import ModelLoadError


class ServerError(ModelLoadError):
    """The server could not be used."""

    code = "server"

    def __init__(self, message: str) -> None:
        super().__init__(redact_url(message))


class ServerUnreachable(ServerError):
    """Nothing answers at the URL: refused, no such host, TLS failure."""

    code = "server_unreachable"
    usage = True


class ServerAuthFailed(ServerError):
    """401 or 403: a wrong, missing or unauthorised API key."""

    code = "server_auth"
    usage = True


class ServerTimeout(ServerError):
    code = "server_timeout"


class ServerHTTPError(ServerError):
    """The server answered with an error status."""

    code = "server_http"

    def __init__(self, message: str, status: int, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail
        if status == 404:
            self.code = "server_not_found"
            self.usage = True


class ServerProtocolError(ServerError):
    """The answer is not what the OpenAI API describes: bad JSON, a stream cut off."""

    code = "server_protocol"


class StreamCut(ServerProtocolError):
    """The connection closed before the reply's end ([DONE] or a finish reason)."""

    code = "stream_cut"


def describe(exc: httpx.HTTPError, url: str, timeout: float) -> ServerError:
    """The one-line error for an httpx failure on ``url``."""
    if isinstance(exc, httpx.ConnectTimeout):
        return ServerTimeout(f"no connection to {url} within {timeout:g} s")
    if isinstance(exc, httpx.TimeoutException):
        return ServerTimeout(f"the server at {url} sent nothing for {timeout:g} s "
                             "(endpoint timeout)")
    if isinstance(exc, httpx.ConnectError):
        reason = _reason(exc)
        return ServerUnreachable(f"cannot connect to {url}: {reason}"
                                 " (is the server running, and is --base-url right?)")
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
        return StreamCut(f"the server at {url} closed the connection mid-answer: "
                         f"{_reason(exc)}")
    if isinstance(exc, httpx.HTTPStatusError):
        return status_error(exc.response.status_code, _body_message(exc.response), url)
    return ServerError(f"request to {url} failed: {type(exc).__name__}: {_reason(exc)}")


def status_error(status: int, detail: str, url: str) -> ServerError:
    if status in (401, 403):
        return ServerAuthFailed(f"the server at {url} refused the API key (HTTP {status}"
                                f"{': ' + detail if detail else ''}); set the variable "
                                "named by --api-key-env / api_key_env")
    if status == 404:
        return ServerHTTPError(f"{url} was not found (HTTP 404): is the base URL the API "
                               "root, usually ending in /v1?", status, detail)
    return ServerHTTPError(f"the server at {url} answered HTTP {status}"
                           f"{': ' + detail if detail else ''}", status, detail)


def error_detail(body: bytes | str) -> str:
    """The message out of an error body: OpenAI's ``{"error": {"message": ...}}``,
    FastAPI's ``{"detail": ...}``, or the text itself, on one short line."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        data = json.loads(text)
    except ValueError:
        return _one_line(text)
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            return _one_line(str(err["message"]))
        if isinstance(err, str):
            return _one_line(err)
        if "detail" in data:
            return _one_line(str(data["detail"]))
        if "message" in data:
            return _one_line(str(data["message"]))
    return _one_line(text)


def _body_message(response: httpx.Response) -> str:
    try:
        return error_detail(response.content)
    except httpx.ResponseNotRead:
        return ""


def _reason(exc: BaseException) -> str:
    # httpx wraps the OS error; its text ("Connection refused") is the part a person
    # recognises, where httpx's own is "All connection attempts failed".
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno:
            return os.strerror(seen.errno)
        seen = seen.__cause__ or seen.__context__
    return _one_line(str(exc) or type(exc).__name__)


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
