"""The HTTP routes: OpenAI's chat completions and model list, kvchat's typed event
stream and info, and health; every refusal a JSON error body, never a traceback.

``POST /kvchat/v1/chat`` takes a :class:`~engine.api.ChatRequest` as JSON and answers
with the engine's events as JSON lines (``application/x-ndjson``), each parsed back
with :func:`engine.events.parse_event`: ``queued`` while the reply waits, then exactly
what the engine sends, ending with ``done`` or ``error``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from engine.api import ChatRequest
from engine.config import describe_validation_error
from engine.errors import KvchatError, PromptError
from engine.events import Queued
from engine.serve.errors import ApiError, error_body
from engine.serve.hub import SharedEngine
from engine.serve.openai_api import Completion, check_text, parse_body, sse, to_request
from engine.serve.scheduler import Ticket

MAX_BODY_BYTES = 8 << 20
_STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class _ClosingStream(StreamingResponse):
    """Closes its body's generator as soon as the response ends, however it ends (a
    client gone mid-reply included), so the reply is cancelled at once rather than
    whenever the generator is collected; then ``on_close`` (the ticket is left even
    when the body never started)."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None],
                 media_type: str) -> None:
        super().__init__(content, media_type=media_type, headers=_STREAM_HEADERS)
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            body = self.body_iterator
            try:
                if hasattr(body, "aclose"):
                    await body.aclose()
            finally:
                self._on_close()


class Routes:
    def __init__(self, hub: SharedEngine) -> None:
        self.hub = hub

    def _leave(self, ticket: Ticket) -> Callable[[], None]:
        return lambda: self.hub.scheduler.leave(ticket)

    async def health(self, request: Request) -> Response:
        return JSONResponse(self.hub.health())

    async def models(self, request: Request) -> Response:
        info = self.hub.engine.info
        meta = {} if info is None else {
            "n_params": info.n_params, "n_vocab": info.n_vocab, "n_ctx": info.n_ctx,
            "n_ctx_train": info.n_ctx_train, "size": info.file_bytes}
        return JSONResponse({"object": "list", "data": [{
            "id": self.hub.model_id, "object": "model", "created": int(self.hub.started),
            "owned_by": "kvchat", "meta": meta}]})

    async def info(self, request: Request) -> Response:
        return JSONResponse(self.hub.info())

    async def kvchat_chat(self, request: Request) -> Response:
        data = await read_json(request)
        try:
            chat = ChatRequest.model_validate(data)
        except ValidationError as exc:
            raise ApiError(400, describe_validation_error(exc)) from None
        for message in chat.messages:
            check_text(message.content)
        ticket = self.hub.admit()
        return _ClosingStream(self._lines(ticket, chat), self._leave(ticket),
                              "application/x-ndjson")

    async def _lines(self, ticket: Ticket, chat: ChatRequest) -> AsyncIterator[str]:
        async with contextlib.aclosing(self.hub.reply(ticket, chat, "kvchat")) as events:
            async for event in events:
                yield event.model_dump_json() + "\n"

    async def chat_completions(self, request: Request) -> Response:
        body = parse_body(await read_json(request))
        stops = body.stops()
        chat = to_request(body, self.hub.sampling)
        ticket = self.hub.admit()
        completion = Completion(self.hub.model_id, stops)
        if body.stream:
            return _ClosingStream(self._chunks(ticket, chat, completion, body.include_usage),
                                  self._leave(ticket), "text/event-stream")
        try:
            done = await until_gone(request, self._complete(ticket, chat, completion))
        finally:
            self.hub.scheduler.leave(ticket)  # in case the reply never started
        if done is None:  # the client left: nobody to answer
            return Response(status_code=499)
        if completion.error is not None:
            error = completion.error
            status = completion.error_status()
            return JSONResponse(error_body(error.message, error.code, status), status)
        return JSONResponse(completion.whole())

    async def _complete(self, ticket: Ticket, chat: ChatRequest,
                        completion: Completion) -> bool:
        async with contextlib.aclosing(self.hub.reply(ticket, chat, "openai")) as events:
            async for event in events:
                completion.take(event)
                if completion.over:
                    break
        if not completion.over:
            raise KvchatError("the engine's stream ended without a reply")
        return True

    async def _chunks(self, ticket: Ticket, chat: ChatRequest, completion: Completion,
                      include_usage: bool) -> AsyncIterator[str]:
        started = False
        async with contextlib.aclosing(self.hub.reply(ticket, chat, "openai stream")) as events:
            async for event in events:
                if isinstance(event, Queued):  # a comment: keeps the connection alive
                    yield f": queued {event.position}\n\n"
                    continue
                text = completion.take(event)
                if not started and (text or completion.finish is not None):
                    started = True
                    yield completion.chunk({"role": "assistant", "content": ""})
                if text:
                    yield completion.chunk({"content": text})
                if completion.over:
                    break
        if completion.error is not None:
            error = completion.error
            yield sse(error_body(error.message, error.code, completion.error_status()))
        elif completion.finish is not None:
            yield completion.chunk({}, completion.finish, usage=True)
            if include_usage:
                yield completion.usage_chunk()
        yield "data: [DONE]\n\n"


async def read_json(request: Request) -> Any:
    """The body as JSON, at most MAX_BODY_BYTES. Bytes that are not UTF-8 stay in the
    strings as lone surrogates, so a message holding them is refused by the prompt's
    own check, naming the byte."""
    if "application/json" not in request.headers.get("content-type", ""):
        raise ApiError(415, "send the body as JSON with Content-Type: application/json")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise ApiError(413, f"the body is over {MAX_BODY_BYTES >> 20} MiB")
    if not raw:
        raise ApiError(400, "the body is empty: expected a JSON object", "bad_json")
    try:
        return json.loads(bytes(raw).decode("utf-8", "surrogateescape"))
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc.msg} (line {exc.lineno} "
                       f"column {exc.colno})", "bad_json") from None
    except RecursionError:
        raise ApiError(400, "the body is nested too deeply", "bad_json") from None


async def until_gone(request: Request, work: Awaitable[bool]) -> bool | None:
    """``work``'s result, or None when the client disconnected first (``work`` is then
    cancelled, and with it the reply)."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return None if task.cancelled() else task.result()


async def _disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _api_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, PromptError):
        exc = ApiError(400, exc.message, exc.code, param="messages")
    elif isinstance(exc, KvchatError):
        exc = ApiError.from_kvchat(exc)
    assert isinstance(exc, ApiError)
    headers = {"Retry-After": "5"} if exc.status in (429, 503) else None
    return JSONResponse(exc.body(), exc.status, headers=headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = ("no such route: see /v1/models, /v1/chat/completions, /health, "
               "/kvchat/v1/info and /kvchat/v1/chat") if exc.status_code == 404 \
        else f"{request.method} is not allowed on {request.url.path}" \
        if exc.status_code == 405 else str(exc.detail)
    return JSONResponse(error_body(message, f"http_{exc.status_code}", exc.status_code),
                        exc.status_code, headers=exc.headers)


async def _internal(request: Request, exc: Exception) -> Response:
    return JSONResponse(error_body(f"internal error: {type(exc).__name__}", "internal", 500),
                        500)


def build_routes(hub: SharedEngine) -> Starlette:
    routes = Routes(hub)
    table: list[tuple[str, Callable[[Request], Awaitable[Response]], str]] = [
        ("/health", routes.health, "GET"), ("/v1/models", routes.models, "GET"),
        ("/v1/chat/completions", routes.chat_completions, "POST"),
        ("/kvchat/v1/info", routes.info, "GET"), ("/kvchat/v1/chat", routes.kvchat_chat, "POST")]
    return Starlette(
        routes=[Route(path, endpoint, methods=[method]) for path, endpoint, method in table],
        exception_handlers={ApiError: _api_error, KvchatError: _api_error,
                            HTTPException: _http_error, Exception: _internal})
