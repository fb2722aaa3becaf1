"""How long and how much a server may make kvchat wait for and hold.

httpx's timeouts restart with every byte, so a server that trickles bytes, or sends
SSE keep-alive comments between tokens, would hold a request forever. Here every
request gets one deadline for the whole exchange, and a streamed reply one deadline
that only reply tokens move on: the endpoint's ``timeout`` from the request to the
first token and between tokens. A server that streams past ``max_tokens`` is cut off
there (the reply ends with ``length``), and no body is read past a size cap.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from engine.backends.remote.errors import ServerProtocolError, ServerTimeout
from engine.backends.remote.reply import StreamedReply
from engine.backends.remote.wire import Chunk

MAX_BODY_BYTES = 8 * 1024 * 1024
"""The most a non-streamed answer (a model list, /props, /metrics) may hold."""
MAX_ERROR_BYTES = 64 * 1024
"""The most of an error answer's body read for its message."""
MAX_LINE_CHARS = MAX_BODY_BYTES
"""The longest line, and the longest SSE event, a stream may send: a server that sends
bytes without end and no line end would otherwise fill the memory."""
MAX_TOKEN_CHARS = 256
"""No token's text is longer: a reply of more than max_tokens x this went past its
limit even where a server sends several tokens per chunk."""

T = TypeVar("T")


async def get_body(client: httpx.AsyncClient, url: str, seconds: float,
                   limit: int = MAX_BODY_BYTES) -> tuple[int, bytes]:
    """GET ``url``: its status and body, all of it within ``seconds``. Raises
    ServerTimeout, ServerProtocolError (a body over ``limit``) or httpx.HTTPError."""
    async def fetch() -> tuple[int, bytes]:
        async with client.stream("GET", url) as response:
            if response.status_code >= 400:
                return response.status_code, await read_capped(response, MAX_ERROR_BYTES)
            body = bytearray()
            async for part in response.aiter_bytes():
                body += part
                if len(body) > limit:
                    raise ServerProtocolError(f"{url} answered with more than {limit} bytes")
            return response.status_code, bytes(body)

    return await within(fetch(), seconds, f"the server at {url} did not finish answering "
                                          f"within {seconds:g} s (endpoint timeout)")


async def get_json(client: httpx.AsyncClient, url: str, seconds: float) -> Any:
    """The JSON at ``url``, or None for any failure: for probes that only ask."""
    try:
        status, body = await get_body(client, url, seconds)
        return json.loads(body) if status == 200 else None
    except (httpx.HTTPError, ServerProtocolError, ServerTimeout, ValueError):
        return None


async def within(step: Any, seconds: float, message: str) -> Any:
    """Await ``step``; ServerTimeout with ``message`` when it takes over ``seconds``."""
    try:
        return await asyncio.wait_for(step, seconds)
    except TimeoutError:
        raise ServerTimeout(message) from None


async def read_capped(response: httpx.Response, limit: int) -> bytes:
    """The first ``limit`` bytes of a streamed response's body."""
    body = bytearray()
    async for part in response.aiter_bytes():
        body += part
        if len(body) >= limit:
            break
    return bytes(body[:limit])


async def bounded_lines(response: httpx.Response, url: str,
                        limit: int = MAX_LINE_CHARS) -> AsyncIterator[str]:
    """A streamed response's lines (``\\n`` or ``\\r\\n`` ended), none longer than
    ``limit``. Raises ServerProtocolError past it."""
    pending = ""
    async for text in response.aiter_text():
        *lines, pending = (pending + text).split("\n")
        for line in lines:
            yield line.removesuffix("\r")
        if len(pending) > limit:
            raise ServerProtocolError(f"{url} sent a line of more than {limit} characters")
    if pending:
        yield pending.removesuffix("\r")


async def sse_data(response: httpx.Response, url: str,
                   limit: int = MAX_LINE_CHARS) -> AsyncIterator[str]:
    """The ``data`` of each server-sent event of ``response`` that has any (comments,
    other fields and blank data skipped), none longer than ``limit``. Raises
    ServerProtocolError for a response that is not an event stream, or past the limit."""
    kind = response.headers.get("content-type", "").partition(";")[0]
    if "text/event-stream" not in kind:
        raise ServerProtocolError(f"{url} did not answer with an event stream: its "
                                  f"Content-Type is {kind!r}")
    data: list[str] = []
    size = 0
    async for line in bounded_lines(response, url, limit):
        if not line:
            if "".join(data).strip():
                yield "\n".join(data)
            data, size = [], 0
            continue
        field, _, value = line.partition(":")
        if field == "data":
            data.append(value.removeprefix(" "))
            size += len(value)
            if size > limit:
                raise ServerProtocolError(f"{url} sent an event of more than {limit} "
                                          "characters")
    if "".join(data).strip():
        yield "\n".join(data)


class Stalled:
    """The reader's queue stayed without reply tokens past the deadline."""

    def __init__(self, first: bool) -> None:
        self.first = first


@dataclass
class ReplyWatch:
    """The deadline and the token limit of one streamed reply."""

    timeout: float
    max_tokens: int
    last_progress: float
    """perf_counter of the request, then of the last chunk that moved the reply on."""
    chars: int = 0

    async def next(self, queue: asyncio.Queue[T]) -> T | Stalled:
        """The reader's next item, or Stalled once the deadline passes first."""
        left = self.last_progress + self.timeout - time.perf_counter()
        try:
            return await asyncio.wait_for(queue.get(), max(0.0, left))
        except TimeoutError:
            return Stalled(first=self.chars == 0)

    def past_limit(self, reply: StreamedReply, chunk: Chunk) -> bool:
        """Whether ``chunk``'s text would take the reply past ``max_tokens``: more text
        chunks than that (each carries a token at least), or more text than so many
        tokens can hold."""
        text = chunk.text
        return bool(text) and (reply.chunks >= self.max_tokens
                               or self.chars + len(text) > self.max_tokens * MAX_TOKEN_CHARS)

    def took(self, chunk: Chunk) -> None:
        """A chunk was used: text or the finish moves the deadline; keep-alives, empty
        deltas and role-only chunks do not."""
        if chunk.text or chunk.finish_reason:
            self.last_progress = time.perf_counter()
            self.chars += len(chunk.text)

    def stalled_error(self, stalled: Stalled, url: str) -> ServerTimeout:
        if stalled.first:
            return ServerTimeout(f"the server at {url} sent no reply within {self.timeout:g} s "
                                 "(endpoint timeout; keep-alives do not count)")
        return ServerTimeout(f"the server at {url} sent nothing more of the reply for "
                             f"{self.timeout:g} s (endpoint timeout; keep-alives do not count)")
