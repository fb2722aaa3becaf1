"""Errors as an HTTP client sees them: a status and OpenAI's JSON error body, for the
OpenAI routes and kvchat's own alike, so any client can show the message."""

from __future__ import annotations

from typing import Any

from engine.errors import KvchatError

# Engine error codes (``Error.code``) that are the request's fault, not the server's.
CLIENT_CODES = {
    "prompt_too_long": 400, "prompt_empty": 400, "prompt_not_utf8": 400, "prompt": 400,
    "constraint_invalid": 400, "constraint_unsupported": 400,
    "queue_full": 429, "server_closing": 503, "not_loaded": 503, "closed": 503,
}


class ApiError(Exception):
    """A request refused before anything was generated."""

    def __init__(self, status: int, message: str, code: str = "invalid_request",
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param

    @classmethod
    def from_kvchat(cls, exc: KvchatError) -> ApiError:
        return cls(status_for(exc.code), exc.message, exc.code)

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.code, self.status, self.param)


def status_for(code: str) -> int:
    """The HTTP status of an engine error code: 4xx for the request's faults, 429 and
    503 for a busy or stopping server, 500 for the rest."""
    return CLIENT_CODES.get(code, 500)


def error_body(message: str, code: str, status: int, param: str | None = None,
               ) -> dict[str, Any]:
    kind = ("authentication_error" if status == 401 else "rate_limit_error" if status == 429
            else "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
