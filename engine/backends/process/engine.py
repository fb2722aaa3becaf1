"""The local model in a process of its own, behind the same ``ChatEngine`` interface.

Why a process: the app's screen (layout, Markdown, charts) and the token loop are both
Python, and in one process they take turns on one interpreter lock. With a fast model
the screen's share shows up directly as slower decoding (on an H200 the app streamed
at 0.67x of ``kvchat ask`` with the engine on a thread; docs/tui.md). In a child
process the token loop has an interpreter to itself, exactly as in ``kvchat ask``,
and the screen reads finished events from a pipe. A crash inside llama.cpp (a native
abort, the kernel's OOM killer) now ends only the child: the reply in flight ends
with an ``engine_died`` error, the conversation is already in the store, and the next
reply starts a new process and reloads the model.

Token counts stay synchronous and exact: once the child has loaded the model, this
side reads the GGUF's vocabulary alone (no weights) for ``count_tokens``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import signal
import tempfile
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import IO

from pydantic import BaseModel

from engine.api import ChatEngine, ChatRequest, ModelAnswer, ModelChoice, check_open
from engine.backends.process.launcher import EngineChild, Launcher, stderr_tail
from engine.backends.process.replies import OpenReplies
from engine.backends.process.wire import (
    REPLY_ADAPTER,
    Answer,
    Chat,
    Classify,
    Close,
    Failed,
    FromChild,
    ListModels,
    Loaded,
    Models,
    Start,
    StreamEvent,
    Switch,
    Switched,
    encode,
    raised,
)
from engine.config import (
    CacheConfig,
    KVCacheConfig,
    ModelConfig,
    SamplingConfig,
    SpeculativeConfig,
)
from engine.errors import EngineClosed, EngineDied, KvchatError, ModelLoadError
from engine.events import Error, Event, MemorySnapshot, ModelLoaded
from engine.model.vocab import VocabTokenizer

log = logging.getLogger("kvchat.engine")

CLOSE_TIMEOUT_S = 15.0
"""How long ``close`` waits for the child to finish its reply and free the model."""


class ProcessEngine(ChatEngine):
    def __init__(self, model: ModelConfig, sampling: SamplingConfig | None = None,
                 kv: KVCacheConfig | None = None,
                 speculative: SpeculativeConfig | None = None,
                 cache: CacheConfig | None = None) -> None:
        self._start = Start(model=model, sampling=sampling or SamplingConfig(),
                            kv=kv or KVCacheConfig(),
                            speculative=speculative or SpeculativeConfig(),
                            cache=cache or CacheConfig())
        self._launcher = Launcher()
        self._proc: EngineChild | None = None
        self._stderr: IO[bytes] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._loaded: asyncio.Future[Loaded] | None = None
        self._replies = OpenReplies(self._send)
        self.parallel_replies = model.parallel
        self._relay_gap_s = 0.0
        """How often, at most, the engine process sends a reply's events
        (:meth:`pace_events`); it travels with each request."""
        self._answers: dict[int, asyncio.Future[Answer | None]] = {}
        self._calls: dict[int, asyncio.Future[Models | Switched]] = {}
        """Model listings and switches waiting for the child's answer."""
        self._ids = itertools.count(1)
        self._info: ModelLoaded | None = None
        self._memory: list[MemorySnapshot] = []
        self._vocab: VocabTokenizer | None = None
        self._vocab_path: str | None = None
        self._vocab_task: asyncio.Task[None] | None = None
        self._launching: asyncio.Lock | None = None
        self._closed = False
        self.starts = 0
        """Engine processes started so far (more than one after a crash)."""
        self.death = ""
        """How the last engine process to die ended, and llama.cpp's last lines."""

    # -- lifecycle ----------------------------------------------------------------

    @property
    def info(self) -> ModelLoaded | None:
        return self._info

    @property
    def memory(self) -> list[MemorySnapshot]:
        """The latest load's memory snapshots: planned, then measured."""
        return list(self._memory)

    @property
    def pid(self) -> int | None:
        """The engine process, while one runs."""
        return self._proc.pid if self._proc is not None else None

    async def start(self) -> ModelLoaded:
        async with self._launch_lock():
            if self._closed:
                raise EngineClosed("the engine is closed")
            proc = self._proc
            if proc is not None and proc.popen.poll() is not None and self._reader:
                await self._reader  # died while idle: let that be reported first
            if self._proc is None:
                await self._launch(self._start)
        if self._info is None:  # the child runs, but a failed switch left it no model
            raise ModelLoadError("no model is loaded (the last switch failed): "
                                 "switch to one")
        return self._info

    def _launch_lock(self) -> asyncio.Lock:
        """Held while a child starts or switches its model: one at a time, and a reply
        waits for it."""
        if self._closed:
            raise EngineClosed("the engine is closed")
        if self._launching is None:
            self._launching = asyncio.Lock()
        return self._launching

    async def _launch(self, start: Start) -> None:
        loop = asyncio.get_running_loop()
        # Kept open for the child's life: its last lines explain a crash.
        stderr = tempfile.TemporaryFile(prefix="kvchat-engine-")  # noqa: SIM115
        proc = await self._launcher.launch(stderr)
        self.starts += 1
        loaded: asyncio.Future[Loaded] = loop.create_future()
        if self._stderr is not None:
            self._stderr.close()
        self._proc, self._stderr, self._loaded = proc, stderr, loaded
        self._reader = asyncio.create_task(self._read(proc))
        self._send(start)
        try:
            result = await loaded
        except BaseException:
            self._proc = None  # refused to load, not died: nothing to report twice
            await self._stop(proc)
            raise
        self._use(result.info, result.memory)

    def _use(self, info: ModelLoaded | None, memory: list[MemorySnapshot]) -> None:
        """The child's model now; a crash starts the next child with it."""
        self._info, self._memory = info, memory
        if info is None:
            return
        model = self._start.model.model_copy(update={"path": Path(info.path)})
        self._start = self._start.model_copy(update={"model": model})
        if info.path != self._vocab_path:
            # Only now that llama.cpp in the child has read the file without crashing
            # does this process touch it; the weights are not read here.
            self._vocab_path = info.path
            self._vocab_task = asyncio.create_task(
                self._read_vocab(Path(info.path), self._vocab_task))

    async def _read_vocab(self, path: Path, before: asyncio.Task[None] | None) -> None:
        if before is not None:
            await before  # a read in flight finishes first (it cannot be stopped)
        old, self._vocab = self._vocab, None  # counts are estimates until the new one
        if old is not None:
            old.close()
        try:
            vocab = await asyncio.to_thread(VocabTokenizer, path)
        except KvchatError as exc:  # counts fall back to an estimate
            log.warning("%s", exc.message)
            return
        if str(path) == self._vocab_path:
            self._vocab = vocab
        else:  # another switch came meanwhile
            vocab.close()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        proc = self._proc
        if proc is not None:
            self._replies.cancel()
            self._send(Close())
            try:
                await asyncio.wait_for(proc.wait(), CLOSE_TIMEOUT_S)
            except TimeoutError:
                log.warning("the engine process did not stop in %.0f s: killed",
                            CLOSE_TIMEOUT_S)
            await self._stop(proc)
        if self._vocab_task is not None:
            await self._vocab_task  # a read in flight finishes (it cannot be stopped)
        if self._vocab is not None:
            self._vocab.close()
            self._vocab = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        self._launcher.close()

    async def _stop(self, proc: EngineChild) -> None:
        if not proc.exited.done():
            proc.kill()
            await proc.wait()
        proc.stdin.close()
        if self._reader is not None:
            await self._reader

    def cancel(self) -> None:
        self._replies.cancel(oldest_only=self.parallel_replies == 1)  # that one is running

    # -- requests -------------------------------------------------------------------

    def chat(self, request: ChatRequest) -> AsyncIterator[Event]:
        return self.stream(request)

    def stream(self, request: ChatRequest, cancel: threading.Event | None = None,
               n: int = 1) -> AsyncIterator[Event]:
        """``chat``; setting ``cancel`` cancels this reply (by its id) alone."""
        check_open(self._closed)
        if n > self.parallel_replies:
            raise KvchatError(f"{n} answers at once need {n} sequences: load the model "
                              f"with --parallel {n} (it has {self.parallel_replies})")
        # Sampling left unset is resolved by the child's engine, from ``Start``.
        return self._stream(Chat(id=next(self._ids), request=request,
                                 relay_gap_s=self._relay_gap_s, n=n), cancel)

    def answers(self, request: ChatRequest, n: int,
                cancel: threading.Event | None = None) -> AsyncIterator[Event]:
        return self.stream(request, cancel, n)

    def pace_events(self, gap_s: float) -> None:
        """Each batch the child sends wakes both processes: the child's channel holds
        a reply's events back for ``gap_s`` between batches (:class:`EventChannel`)."""
        self._relay_gap_s = gap_s

    async def _stream(self, request: Chat,
                      cancel: threading.Event | None = None) -> AsyncIterator[Event]:
        starts = self.starts
        try:
            await self.start()  # after a crash: a new process, the model loaded again
        except KvchatError as exc:
            yield Error(code=exc.code, message=exc.message)  # every answer's end
            return
        if starts and self.starts > starts and self._info is not None:
            # A new process: the reply's stream says what it loaded, and where memory went.
            yield self._info
            for snapshot in self._memory:
                yield snapshot
        channel = self._replies.open(request.id, request.n, cancel)
        self._send(request)
        finished = False
        try:
            async for event in channel:
                yield event
            finished = True
        finally:
            self._replies.close(request.id, cancel=not finished)  # nobody left to read it

    def count_tokens(self, text: str) -> int | None:
        vocab = self._vocab
        return vocab.count(text) if vocab is not None else None

    async def classify(self, text: str, routes: Sequence[str],
                       descriptions: dict[str, str]) -> ModelAnswer | None:
        if self._closed or self._proc is None:
            return None
        request = Classify(id=next(self._ids), text=text, routes=list(routes),
                           descriptions=dict(descriptions))
        future: asyncio.Future[Answer | None] = asyncio.get_running_loop().create_future()
        self._answers[request.id] = future
        self._send(request)
        answer = await future
        if answer is None or answer.route is None:
            return None
        return ModelAnswer(route=answer.route, confidence=answer.confidence,
                           elapsed_ms=answer.elapsed_ms, prompt_tokens=answer.prompt_tokens)

    async def list_models(self, dirs: Sequence[str | Path] = ()) -> list[ModelChoice]:
        check_open(self._closed)
        request = ListModels(id=next(self._ids), dirs=[str(d) for d in dirs],
                             model=self._start.model)
        if self._proc is None:
            # No child holds a model (not started yet, its start failed, or it died):
            # one started for the listing alone plans with nothing loaded.
            return await self._list_apart(request)
        reply = await self._call(request)
        assert isinstance(reply, Models)
        return reply.models

    async def _list_apart(self, request: ListModels) -> list[ModelChoice]:
        reply = await self._launcher.ask_once(request)
        if reply is None:
            raise EngineDied("the process listing the models ended without an answer")
        if isinstance(reply, Failed):
            raise raised(reply)
        assert isinstance(reply, Models)
        return reply.models

    async def switch_model(self, path: Path | str) -> ModelLoaded:
        async with self._launch_lock():
            if self._proc is None:  # nothing runs: a child starts with the new model
                model = self._start.model.model_copy(update={"path": Path(path)})
                await self._launch(self._start.model_copy(update={"model": model,
                                                                  "switch": True}))
                assert self._info is not None
                return self._info
            reply = await self._call(Switch(id=next(self._ids), path=str(path)))
            assert isinstance(reply, Switched)
            self._use(reply.info, reply.memory)
        if reply.error is not None:
            raise raised(Failed(id=reply.id, error=reply.error, message=reply.message))
        assert reply.info is not None
        return reply.info

    async def _call(self, request: ListModels | Switch) -> Models | Switched:
        """Send ``request`` and wait for its answer; raises what the child raised, or
        EngineDied."""
        future: asyncio.Future[Models | Switched] = asyncio.get_running_loop().create_future()
        self._calls[request.id] = future
        self._send(request)
        try:
            return await future
        finally:
            self._calls.pop(request.id, None)

    # -- the pipe -------------------------------------------------------------------

    def _send(self, message: BaseModel) -> None:
        proc = self._proc
        if proc is None or proc.stdin.is_closing():
            return  # the child is gone; its reader reports that to whoever waits
        proc.stdin.write(encode(message))

    async def _read(self, proc: EngineChild) -> None:
        try:
            while line := await proc.stdout.readline():
                self._dispatch(REPLY_ADAPTER.validate_json(line))
        except (ValueError, OSError) as exc:  # a line past the limit, or not ours
            log.error("the engine process sent something unreadable: %s", exc)
            proc.kill()
        code = await proc.wait()
        if proc is self._proc:
            self._gone(code)

    def _dispatch(self, reply: FromChild) -> None:
        if isinstance(reply, StreamEvent):
            self._replies.put(reply.id, reply.event)
        elif isinstance(reply, Answer):
            future = self._answers.pop(reply.id, None)
            if future is not None and not future.done():
                future.set_result(reply)
        elif isinstance(reply, Models | Switched):
            call = self._calls.get(reply.id)
            if call is not None and not call.done():
                call.set_result(reply)
        elif isinstance(reply, Loaded):
            if self._loaded is not None and not self._loaded.done():
                self._loaded.set_result(reply)
        elif isinstance(reply, Failed):
            self._failed(reply)

    def _failed(self, failed: Failed) -> None:
        error = raised(failed)
        if failed.id is None:
            if self._loaded is not None and not self._loaded.done():
                self._loaded.set_exception(error)
            return
        self._replies.fail(failed.id, error)
        future = self._answers.pop(failed.id, None)
        if future is not None and not future.done():
            future.set_result(None)
        call = self._calls.get(failed.id)
        if call is not None and not call.done():
            call.set_exception(error)

    def _gone(self, returncode: int) -> None:
        """The child exited: whoever still waits on it hears why, once."""
        self._proc = None
        if self._closed:
            error: KvchatError = EngineClosed("the engine is closed")
        else:
            error = EngineDied(self._death_message(returncode))
            log.error("%s", error.message)
        if self._loaded is not None and not self._loaded.done():
            self._loaded.set_exception(error)
        self._replies.fail_all(error)
        for future in self._answers.values():
            if not future.done():
                future.set_result(None)
        self._answers.clear()
        for call in self._calls.values():
            if not call.done():
                call.set_exception(error)

    def _death_message(self, returncode: int) -> str:
        signals = {-s.value: s.name for s in signal.Signals}
        how = (f"was killed by {signals.get(returncode, f'signal {-returncode}')}"
               if returncode < 0 else f"exited with status {returncode}")
        tail = stderr_tail(self._stderr)
        self.death = f"{how.removeprefix('was ')}: {tail}" if tail else how
        detail = f" ({tail})" if tail else ""
        return f"the engine process {how}{detail}; the next message loads the model again"

