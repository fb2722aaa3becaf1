"""A kvchat server behind the base URL (``kvchat serve``): found by its
``/kvchat/v1/info``, it sends the engine's own typed events, so a client attached to it
shows what a local engine shows: the memory plan, the KV cache, speculation, exact
token counts, and its place in the server's queue.

Each reply is one ``POST /kvchat/v1/chat`` carrying the whole
:class:`~engine.api.ChatRequest` (KV reserve and output constraint included), read
back line by line. A reader task owns the stream, so ``cancel`` closes it at once;
the server cancels a reply whose client left, and the ``done`` that the client then
never receives is made here from what it did receive.

The same limits hold as for any server (``limits.py``): the endpoint's ``timeout``
from the request to the first token and between tokens, which only ``token`` events
move (``queued``, ``progress`` and the other events a server may send without end do
not), and ``max_tokens``: a server that streams past it is cut off there, the reply
ending with ``length``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import ValidationError

from engine.api import ChatRequest
from engine.backends.remote.errors import (
    ServerError,
    ServerProtocolError,
    StreamCut,
    describe,
    error_detail,
    redact_url,
    status_error,
)
from engine.backends.remote.limits import (
    MAX_ERROR_BYTES,
    MAX_TOKEN_CHARS,
    ReplyWatch,
    Stalled,
    bounded_lines,
    get_json,
    read_capped,
)
from engine.backends.remote.probe import PROBE_TIMEOUT_S, server_root
from engine.errors import KvchatError
from engine.events import (
    Done,
    Error,
    Event,
    FinishReason,
    MemorySnapshot,
    ModelLoaded,
    PromptEvaluated,
    TokenChunk,
    parse_event,
)

INFO_PATH = "/kvchat/v1/info"
CHAT_PATH = "/kvchat/v1/chat"


@dataclass(frozen=True)
class KvchatServer:
    base_url: str
    info: ModelLoaded
    """The server's model as it loaded it, marked ``remote="kvchat"``."""
    memory: list[MemorySnapshot]
    """The server's load, planned then measured."""


async def probe_kvchat(client: httpx.AsyncClient, base_url: str,
                       model: str | None) -> KvchatServer | None:
    """The kvchat server at ``base_url``, or None for any other server (or none: the
    standard probe that follows says what is wrong). Raises ServerError when it is one
    but does not serve ``model``."""
    data = await get_json(client, server_root(base_url) + INFO_PATH, PROBE_TIMEOUT_S)
    if data is None:
        return None
    try:
        loaded = ModelLoaded.model_validate(data["model_loaded"])
        memory = [MemorySnapshot.model_validate(m) for m in data.get("memory") or []]
        served = str(data["model"])
    except (ValueError, KeyError, TypeError, ValidationError):
        return None
    if model is not None and model not in (served, loaded.name):
        raise ServerError(f"the kvchat server at {base_url} has no model {model!r} "
                          f"(it serves: {served})")
    shown = redact_url(base_url)  # what is shown and stored: no password
    info = loaded.model_copy(update={
        "path": shown, "remote": "kvchat",
        "backend": f"kvchat:{urlsplit(shown).netloc} {loaded.backend}",
        "description": f"{loaded.description} on kvchat serve at {shown}"})
    return KvchatServer(base_url, info, memory)


class _Ended:
    """The stream ended without a done or error event."""


class _ReaderCancelled:
    pass


_Item = Event | _Ended | _ReaderCancelled | BaseException


@dataclass
class _Tally:
    """What arrived of a reply: enough for the ``done`` of a reply cancelled here."""

    started: float = field(default_factory=time.perf_counter)
    prompt: PromptEvaluated | None = None
    first_at: float | None = None
    tokens: int = 0
    parts: list[str] = field(default_factory=list)

    def see(self, event: Event) -> None:
        if isinstance(event, PromptEvaluated):
            self.prompt = event
        elif isinstance(event, TokenChunk):
            self.first_at = self.first_at or time.perf_counter()
            self.tokens += len(event.token_ids)
            self.parts.append(event.text)

    def past(self, watch: ReplyWatch, event: TokenChunk) -> bool:
        """Whether ``event`` would take the reply past ``max_tokens``, in tokens or
        in more text than so many tokens hold."""
        return (self.tokens + len(event.token_ids) > watch.max_tokens
                or watch.chars + len(event.text) > watch.max_tokens * MAX_TOKEN_CHARS)

    def ended(self, reason: FinishReason = "cancelled") -> Done:
        """The ``done`` of a reply ended here rather than by the server."""
        now = time.perf_counter()
        first = self.first_at or now
        prompt = self.prompt
        return Done(finish_reason=reason,
                    prompt_tokens=prompt.prompt_tokens if prompt else 0,
                    reused_tokens=prompt.reused_tokens if prompt else None,
                    evaluated_tokens=prompt.evaluated_tokens if prompt else None,
                    completion_tokens=self.tokens, ttft_s=round(first - self.started, 4),
                    prefill_tokens_per_s=None,
                    tokens_per_s=round((self.tokens - 1) / (now - first), 2)
                    if self.tokens > 1 and now > first else 0.0,
                    total_s=round(now - self.started, 4), drafted_tokens=None,
                    accepted_tokens=None, text="".join(self.parts),
                    token_count="exact" if prompt else "estimate")


class KvchatReplies:
    """Replies from one kvchat server, one at a time."""

    def __init__(self, server: KvchatServer, timeout: float) -> None:
        self.server = server
        self._timeout = timeout
        self._lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None

    def cancel(self) -> None:
        reader = self._reader
        if reader is not None and not reader.done():
            reader.cancel()

    async def stream(self, client: httpx.AsyncClient, request: ChatRequest,
                     ) -> AsyncIterator[Event]:
        async with self._lock:
            url = server_root(self.server.base_url) + CHAT_PATH
            queue: asyncio.Queue[_Item] = asyncio.Queue()
            reader = asyncio.create_task(self._read(client, url, request, queue))
            reader.add_done_callback(
                lambda task: queue.put_nowait(_ReaderCancelled()) if task.cancelled() else None)
            self._reader = reader
            tally = _Tally()
            assert request.sampling is not None  # the engine set its default
            watch = ReplyWatch(self._timeout, request.sampling.max_tokens, tally.started)
            try:
                while True:
                    item = await watch.next(queue)
                    if isinstance(item, _ReaderCancelled):
                        yield tally.ended()
                        return
                    if isinstance(item, TokenChunk):
                        if tally.past(watch, item):
                            yield tally.ended("length")  # stop reading, as a limit would
                            return
                        if item.token_ids or item.text:
                            watch.last_progress = time.perf_counter()
                            watch.chars += len(item.text)
                    if not isinstance(item, _Ended | BaseException | Stalled):
                        tally.see(item)
                        yield item
                        if isinstance(item, Done | Error):
                            return
                        continue
                    failure = (watch.stalled_error(item, url) if isinstance(item, Stalled)
                               else item if isinstance(item, BaseException)
                               else StreamCut(f"the stream from {url} ended before the "
                                              "reply did"))
                    yield self._error(failure, url, tally)
                    return
            finally:
                if not reader.done():
                    reader.cancel()  # the consumer left early: the server cancels the reply
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await reader
                if self._reader is reader:
                    self._reader = None

    async def _read(self, client: httpx.AsyncClient, url: str, request: ChatRequest,
                    queue: asyncio.Queue[_Item]) -> None:
        body = request.model_dump(mode="json", by_alias=True)
        try:
            async with client.stream("POST", url, json=body) as response:
                if response.status_code >= 400:
                    body = await read_capped(response, MAX_ERROR_BYTES)
                    queue.put_nowait(_refusal(response.status_code, body, url))
                    return
                async for line in bounded_lines(response, url):
                    if line.strip():
                        try:
                            queue.put_nowait(parse_event(line))
                        except ValidationError:
                            raise ServerProtocolError(
                                f"the kvchat server sent a line that is not an event: "
                                f"{line[:120]!r}") from None
            queue.put_nowait(_Ended())
        except (httpx.HTTPError, KvchatError) as exc:
            queue.put_nowait(exc)
        except Exception as exc:  # never leave the consumer waiting on an empty queue
            queue.put_nowait(ServerProtocolError(f"{type(exc).__name__}: {exc}"))

    def _error(self, exc: BaseException, url: str, tally: _Tally) -> Error:
        if isinstance(exc, httpx.HTTPError):
            exc = describe(exc, url, self._timeout)
        code = exc.code if isinstance(exc, KvchatError) else "server"
        message = exc.message if isinstance(exc, KvchatError) else str(exc)
        if tally.parts:
            message += f" (the partial reply, {tally.tokens} tokens, is kept)"
        return Error(code=code, message=message)


def _refusal(status: int, content: bytes, url: str) -> Event | KvchatError:
    """A refused request: the server's own error code and message where it sent them
    (a prompt it cannot take, a full queue), else the status as one line."""
    try:
        error: Any = httpx.Response(status, content=content).json()["error"]
        return Error(code=str(error["code"]), message=str(error["message"]))
    except (ValueError, KeyError, TypeError):
        return status_error(status, error_detail(content), url)
