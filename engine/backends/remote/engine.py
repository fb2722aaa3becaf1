"""A backend that drives an OpenAI-compatible server: llama-server, vLLM, Ollama...

Replies stream as server-sent events (httpx + httpx-sse) and become the same events
the local engine sends. The server owns tokenizer and KV cache, so what kvchat cannot
see is left unknown (None) or labelled an estimate, never made up: token counts come
from the server's usage fields (or llama-server's ``timings``) when the reply ends,
and from an offline tiktoken estimate before that.

A reader task owns the HTTP stream and hands chunks over a queue, so ``cancel`` can
close the connection at once, even while the server is silent.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import httpx
from httpx_sse import aconnect_sse
from pydantic import SecretStr, ValidationError

from engine.api import ChatEngine, ChatMessage, ChatRequest, ModelChoice, check_open
from engine.backends.remote.errors import (
    ServerError,
    ServerHTTPError,
    ServerProtocolError,
    StreamCut,
    describe,
    error_detail,
    redact_url,
    status_error,
)
from engine.backends.remote.kvchat import KvchatReplies, probe_kvchat
from engine.backends.remote.limits import (
    MAX_ERROR_BYTES,
    ReplyWatch,
    Stalled,
    read_capped,
    sse_data,
)
from engine.backends.remote.probe import ServerInfo, probe
from engine.backends.remote.reply import StreamedReply
from engine.backends.remote.stats import read_stats
from engine.backends.remote.wire import (
    Chunk,
    ConstraintForm,
    chat_body,
    constraint_forms,
    finish_reason,
)
from engine.config import EndpointConfig, SamplingConfig
from engine.errors import EngineClosed, KvchatError, SwitchUnsupported
from engine.events import (
    Error,
    Event,
    KVUsage,
    MemorySnapshot,
    ModelLoaded,
    Progress,
    PromptEvaluated,
    TokenChunk,
)
from engine.routing.token_count import TokenCounter

PROGRESS_EVERY_S = 0.5
# Statuses with which a server refuses a field it does not support (FastAPI answers
# 422, llama-cpp-python turns that into 500), so the next constraint form is tried.
_REFUSAL_STATUSES = (400, 415, 422, 500, 501)
# Turn markers and role names a chat template adds per message, for the estimate.
_PER_MESSAGE_TOKENS = 4
_NO_SWITCH = ("a server backend cannot switch models here: the server serves its own "
              "(choose another with the endpoint's model in the config)")


class _End:
    """The reader's last item: the stream ended cleanly ([DONE] or EOF)."""

    def __init__(self, saw_done: bool) -> None:
        self.saw_done = saw_done


class _Cancelled:
    pass


class OpenAIEngine(ChatEngine):
    def __init__(self, endpoint: EndpointConfig, *, api_key: SecretStr | None = None,
                 sampling: SamplingConfig | None = None, assumed_n_ctx: int = 4096,
                 tiktoken_source: str | Path | None = "cl100k_base") -> None:
        """``api_key``: the key itself, read by the caller from the variable named in
        ``endpoint.api_key_env``; only ever sent as a bearer header.
        ``assumed_n_ctx``: the context budgets use when the server does not say."""
        self.endpoint = endpoint
        self._api_key = api_key
        self._default_sampling = sampling or SamplingConfig()
        self._assumed_n_ctx = assumed_n_ctx
        self._counter = TokenCounter(tiktoken_source=tiktoken_source)
        self._client: httpx.AsyncClient | None = None
        self._server: ServerInfo | None = None
        self._info: ModelLoaded | None = None
        self._lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        self._kvchat: KvchatReplies | None = None
        """Set when the server is ``kvchat serve``: replies then come as its typed events."""
        self._closed = False

    @property
    def info(self) -> ModelLoaded | None:
        return self._info

    @property
    def memory(self) -> list[MemorySnapshot]:
        """A kvchat server's memory snapshots; other servers plan no memory here."""
        return list(self._kvchat.server.memory) if self._kvchat is not None else []

    @property
    def server(self) -> ServerInfo | None:
        """What the probe learnt at start."""
        return self._server

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            headers = {"Accept": "application/json"}
            if self._api_key is not None:
                headers["Authorization"] = f"Bearer {self._api_key.get_secret_value()}"
            timeout = httpx.Timeout(self.endpoint.timeout,
                                    connect=self.endpoint.connect_timeout)
            self._client = httpx.AsyncClient(headers=headers, timeout=timeout)
        return self._client

    async def start(self) -> ModelLoaded:
        if self._closed:
            raise EngineClosed("the engine is closed")
        if self._info is not None:
            return self._info
        began = time.perf_counter()
        kvchat = await probe_kvchat(self._http(), self.endpoint.base_url, self.endpoint.model)
        if kvchat is not None:
            self._kvchat = KvchatReplies(kvchat, self.endpoint.timeout)
            self._info = kvchat.info
            return self._info
        server = await probe(self._http(), self.endpoint.base_url, self.endpoint.model,
                             self.endpoint.timeout)
        self._server = server
        meta = server.meta
        name = PurePosixPath(server.model).name if server.model.endswith(".gguf") \
            else server.model
        shown = redact_url(server.base_url)  # what is shown and stored: no password
        self._info = ModelLoaded(
            path=shown, name=name, architecture="unknown",
            description=f"{server.model} on {server.kind} at {shown}",
            n_params=_meta_int(meta, "n_params"), file_bytes=None,
            weights_bytes=_meta_int(meta, "size"), n_vocab=_meta_int(meta, "n_vocab"),
            n_ctx=server.n_ctx or self._assumed_n_ctx,
            n_ctx_source="server" if server.n_ctx else "assumed",
            n_ctx_train=_meta_int(meta, "n_ctx_train"), n_layers=None, n_gpu_layers=None,
            backend=f"openai:{urlsplit(shown).netloc}", chat_format="server",
            kv_bytes=None, load_s=round(time.perf_counter() - began, 3),
            kv_type="unknown", remote=server.kind)
        return self._info

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.cancel()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def list_models(self, dirs: Sequence[str | Path] = ()) -> list[ModelChoice]:
        raise SwitchUnsupported(_NO_SWITCH)

    async def switch_model(self, path: Path | str) -> ModelLoaded:
        raise SwitchUnsupported(_NO_SWITCH)

    def cancel(self) -> None:
        if self._kvchat is not None:
            self._kvchat.cancel()
        reader = self._reader
        if reader is not None and not reader.done():
            reader.cancel()

    # -- replies ------------------------------------------------------------------------

    def chat(self, request: ChatRequest) -> AsyncIterator[Event]:
        check_open(self._closed)
        request = request.with_default_sampling(self._default_sampling)
        if self._kvchat is not None:  # the engine's own events, reserve and all
            return self._kvchat.stream(self._http(), request)
        # ``reserve`` has no meaning here: the server owns its KV cache.
        return self._stream(request)

    async def _stream(self, request: ChatRequest) -> AsyncIterator[Event]:
        async with self._lock:
            server = self._server
            if server is None:
                yield Error(code="not_loaded", message="the engine is not started")
                return
            constraint = request.constraint
            forms: list[ConstraintForm | None] = [None]
            if constraint is not None:
                try:
                    forms = list(constraint_forms(constraint, server.kind))
                except ValueError as exc:
                    yield Error(code="constraint_invalid", message=str(exc))
                    return
                if not forms:
                    yield Error(code="constraint_unsupported", message=(
                        f"the server ({server.kind}) cannot enforce {constraint.describe()}: "
                        "it takes neither a JSON schema for this format nor a grammar"))
                    return
            refusals: list[str] = []
            for form in forms:
                rejected = False
                async for event in self._attempt(server, request, form):
                    if (isinstance(event, _Refused) and form is not None):
                        refusals.append(f"{form.name} refused ({event.reason})")
                        rejected = True
                        break
                    yield event  # type: ignore[misc]
                if not rejected:
                    return
            assert constraint is not None
            yield Error(code="constraint_unsupported", message=(
                f"the server ({server.kind}) could not enforce {constraint.describe()}: "
                + "; ".join(refusals)))

    async def _attempt(self, server: ServerInfo, request: ChatRequest,
                       form: ConstraintForm | None) -> AsyncIterator[Event | _Refused]:
        """One request to the server under ``form``: the reply's events, or a
        ``_Refused`` alone where the server turned the form down (the next may do)."""
        assert request.sampling is not None
        body = chat_body(request.messages, request.sampling, server.model, server.kind,
                         ignore_eos=request.ignore_eos, constraint=form)
        url = f"{server.base_url}/chat/completions"
        queue: asyncio.Queue[_Item] = asyncio.Queue()
        reply = StreamedReply(time.perf_counter(), self._estimate_prompt(request.messages))
        reader = self._start_reader(url, body, queue)
        next_progress = reply.started + PROGRESS_EVERY_S
        watch = ReplyWatch(self.endpoint.timeout, request.sampling.max_tokens, reply.started)
        try:
            while True:
                item = await watch.next(queue)
                if not isinstance(item, Chunk) or item.error is not None:
                    break
                if watch.past_limit(reply, item):
                    # The server went on past max_tokens: stop reading, as a limit would.
                    reply.finish, item = "length", _End(saw_done=True)
                    break
                watch.took(item)
                events = _take(item, reply)
                for event in events:
                    yield event
                now = reply.last_at or 0.0
                if events and now >= next_progress:
                    next_progress = now + PROGRESS_EVERY_S
                    yield Progress(completion_tokens=reply.chunks, tokens_per_s=reply.rate())
            if isinstance(item, Stalled):
                item = watch.stalled_error(item, url)
            async for event in self._last(item, server, url, reply, form):
                yield event
        finally:
            await self._stop_reader(reader)

    async def _last(self, item: _Item, server: ServerInfo, url: str, reply: StreamedReply,
                    form: ConstraintForm | None) -> AsyncIterator[Event | _Refused]:
        """The attempt's last events, from the item that ended its stream."""
        if isinstance(item, _Refused):
            if form is not None and item.retryable:
                yield item
            else:
                yield Error(code=item.error.code, message=item.error.message)
        elif isinstance(item, BaseException):
            yield self._failure(item, url, reply)
        elif isinstance(item, _Cancelled):
            reply.report = None  # a mid-stream report is not the whole reply's
            yield reply.done("cancelled")
        elif isinstance(item, _End):
            if reply.finish is None and not item.saw_done:
                yield self._failure(StreamCut(
                    f"the stream from {url} ended before the reply did"), url, reply)
            else:
                async for event in self._finish(server, reply):
                    yield event
        else:  # a chunk that carries the server's error
            detail = error_detail(item.model_dump_json(include={"error"}))
            yield self._failure(ServerError(f"the server reported: {detail}"), url, reply)

    def _start_reader(self, url: str, body: dict[str, object],
                      queue: asyncio.Queue[_Item]) -> asyncio.Task[None]:
        reader = asyncio.create_task(self._read(url, body, queue))
        # A task cancelled before its first step never runs its own handlers.
        reader.add_done_callback(
            lambda task: queue.put_nowait(_Cancelled()) if task.cancelled() else None)
        self._reader = reader
        return reader

    async def _stop_reader(self, reader: asyncio.Task[None]) -> None:
        if not reader.done():
            reader.cancel()  # the consumer left early: close the stream
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader
        if self._reader is reader:
            self._reader = None

    async def _read(self, url: str, body: dict[str, object],
                    queue: asyncio.Queue[_Item]) -> None:
        """Stream ``body``'s reply into ``queue``; ends with exactly one of _End,
        _Refused, _Cancelled or an exception."""
        try:
            async with aconnect_sse(self._http(), "POST", url, json=body) as source:
                response = source.response
                if response.status_code >= 400:
                    detail = error_detail(await read_capped(response, MAX_ERROR_BYTES))
                    error = status_error(response.status_code, detail, url)
                    queue.put_nowait(_Refused(error, response.status_code, detail))
                    return
                saw_done = False
                async for data in sse_data(response, url):
                    if saw_done := data.strip() == "[DONE]":
                        break
                    try:
                        queue.put_nowait(Chunk.model_validate_json(data))
                    except ValidationError:
                        raise ServerProtocolError(
                            f"the server sent a chunk that is not chat-completion JSON: "
                            f"{data[:120]!r}") from None
                queue.put_nowait(_End(saw_done))
        except (httpx.HTTPError, KvchatError) as exc:
            queue.put_nowait(exc)
        except Exception as exc:  # never leave the consumer waiting on an empty queue
            queue.put_nowait(ServerProtocolError(f"{type(exc).__name__}: {exc}"))

    def _failure(self, exc: BaseException, url: str, reply: StreamedReply) -> Error:
        if isinstance(exc, httpx.HTTPError):
            exc = describe(exc, url, self.endpoint.timeout)
        code = exc.code if isinstance(exc, KvchatError) else "server"
        message = exc.message if isinstance(exc, KvchatError) else redact_url(str(exc))
        if reply.parts:
            message += f" (the partial reply, {reply.chunks} chunks, is kept)"
        return Error(code=code, message=message)

    async def _finish(self, server: ServerInfo, reply: StreamedReply,
                      ) -> AsyncIterator[Event]:
        stats = None
        if self.endpoint.stats and server.kind in ("llama-server", "vllm"):
            stats = await read_stats(self._http(), server.root, server.kind)
        done = reply.done(finish_reason(reply.finish))
        used = (done.prompt_tokens + done.completion_tokens
                if done.token_count == "server" else None)
        if stats is not None and stats.slot_tokens is not None:
            used = stats.slot_tokens
        if used is not None:
            yield KVUsage(used_cells=used, reserved_cells=0,
                          n_ctx=server.n_ctx or (stats.n_ctx if stats else None),
                          bytes_per_cell=None, used_bytes=None, total_bytes=None,
                          source="server",
                          server_kv_usage=stats.kv_usage if stats else None)
        yield done

    def _estimate_prompt(self, messages: Sequence[ChatMessage]) -> tuple[int, str]:
        method = "estimate"
        total = 0
        for msg in messages:
            count = self._counter.count(msg.content)
            total += count.tokens + _PER_MESSAGE_TOKENS
            method = count.method
        return total, method


@dataclass(frozen=True)
class _Refused:
    """The server answered the request with an error status before streaming."""

    error: ServerError
    status: int
    detail: str

    @property
    def reason(self) -> str:
        return f"HTTP {self.status}{': ' + self.detail if self.detail else ''}"

    @property
    def retryable(self) -> bool:
        return self.status in _REFUSAL_STATUSES and isinstance(self.error, ServerHTTPError)


_Item = Chunk | _End | _Cancelled | _Refused | BaseException


def _take(chunk: Chunk, reply: StreamedReply) -> list[Event]:
    """A chunk's events: the prompt's before the reply's first text, then the text."""
    if chunk.usage is not None or chunk.timings is not None:
        reply.report = chunk
    reply.finish = chunk.finish_reason or reply.finish
    text = chunk.text
    if not text:
        return []
    now = time.perf_counter()
    events: list[Event] = []
    if reply.first_at is None:
        tokens, method = reply.prompt_estimate
        events.append(PromptEvaluated(prompt_tokens=tokens, reused_tokens=None,
                                      evaluated_tokens=None,
                                      prefill_s=round(now - reply.started, 4),
                                      token_count=method))
    reply.add(text, now)
    events.append(TokenChunk(text=text, token_ids=[]))
    return events


def _meta_int(meta: dict[str, object], key: str) -> int | None:
    value = meta.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None
