"""The engine process: ``python -m engine.backends.process.child``, started by ProcessEngine.

It runs a :class:`LocalEngine` as ``kvchat ask`` would, reads requests
(engine.backends.process.wire) on stdin and writes replies to the stdout it was started with.
File descriptor 1 is pointed at stderr at once, so nothing else that prints (a
library, a stray debug line) can corrupt the stream; stderr is the app's log of this
process. The app's end of stdin closing, for whatever reason, ends the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading

from engine.backends.local import LocalEngine
from engine.backends.model_switch import list_choices
from engine.backends.process.wire import (
    REQUEST_ADAPTER,
    Answer,
    Cancel,
    Chat,
    Classify,
    Close,
    Closed,
    Failed,
    ListModels,
    Loaded,
    Models,
    Start,
    StreamEvent,
    Switch,
    Switched,
    encode,
    failure,
    pipe_streams,
)
from engine.errors import KvchatError


class EngineServer:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._engine: LocalEngine | None = None
        self._cancels: dict[int, threading.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def serve(self, reader: asyncio.StreamReader) -> None:
        while line := await reader.readline():
            request = REQUEST_ADAPTER.validate_json(line)
            if isinstance(request, Close):
                break
            if isinstance(request, Cancel):
                cancel = self._cancels.get(request.id)
                if cancel is not None:
                    cancel.set()
                continue
            if isinstance(request, Start):
                self._spawn(self._load(request))
            elif isinstance(request, Chat):
                # Registered now, not when the task runs: a cancel may follow at once.
                self._cancels[request.id] = threading.Event()
                self._spawn(self._reply(request))
            elif isinstance(request, Classify):
                self._spawn(self._classify(request))
            elif isinstance(request, ListModels):
                self._spawn(self._list_models(request))
            elif isinstance(request, Switch):
                self._spawn(self._switch(request))
        await self._shut_down()

    def _spawn(self, coro: object) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, message: Loaded | Failed | StreamEvent | Answer | Models
                    | Switched | Closed) -> None:
        self._writer.write(encode(message))
        # Waits only while the app is not reading; the engine thread keeps decoding
        # meanwhile, and its channel hands over the tokens as one chunk afterwards.
        await self._writer.drain()

    async def _load(self, start: Start) -> None:
        self._engine = LocalEngine(start.model, start.sampling, start.kv, start.speculative,
                                   start.cache)
        try:
            if start.switch and start.model.path is not None:
                info = await self._engine.switch_model(start.model.path)
            else:
                info = await self._engine.start()
        except KvchatError as exc:
            await self._send(failure(exc))
            return
        except Exception as exc:  # the app must hear of it, not wait for a model forever
            await self._send(failure(KvchatError(f"{type(exc).__name__}: {exc}")))
            raise
        await self._send(Loaded(info=info, memory=self._engine.memory))

    async def _reply(self, chat: Chat) -> None:
        cancel = self._cancels[chat.id]
        try:
            if self._engine is None:
                raise KvchatError("the engine process got a reply before its model")
            # Its messages were checked where the app made them, and decoding the line
            # made them again: nothing more to check here.
            async for event in self._engine.stream(chat.request, cancel, chat.relay_gap_s,
                                                      n=chat.n):
                await self._send(StreamEvent(id=chat.id, event=event))
        except KvchatError as exc:
            await self._send(failure(exc, chat.id))
        except Exception as exc:  # end the reply the app is waiting on, then report it
            await self._send(failure(KvchatError(f"{type(exc).__name__}: {exc}"), chat.id))
            raise
        finally:
            self._cancels.pop(chat.id, None)

    async def _classify(self, req: Classify) -> None:
        answer = None
        if self._engine is not None:
            try:
                answer = await self._engine.classify(req.text, req.routes, req.descriptions)
            except KvchatError:
                answer = None  # the router's own decision stands, as for any backend
        if answer is None:
            await self._send(Answer(id=req.id))
        else:
            await self._send(Answer(id=req.id, route=answer.route,
                                    confidence=answer.confidence,
                                    elapsed_ms=answer.elapsed_ms,
                                    prompt_tokens=answer.prompt_tokens))

    async def _list_models(self, req: ListModels) -> None:
        try:
            if self._engine is not None:
                models = await self._engine.list_models(req.dirs)
            else:  # a process started only to list them: nothing loaded, nothing freed
                models = await asyncio.to_thread(list_choices, req.model, req.dirs, None)
        except KvchatError as exc:
            await self._send(failure(exc, req.id))
            return
        await self._send(Models(id=req.id, models=models))

    async def _switch(self, req: Switch) -> None:
        engine = self._engine
        if engine is None:
            await self._send(failure(KvchatError("the engine process was asked to switch "
                                                 "before its start"), req.id))
            return
        try:
            await engine.switch_model(req.path)
        except KvchatError as exc:
            await self._send(Switched(id=req.id, info=engine.info, memory=engine.memory,
                                      error=type(exc).__name__, message=exc.message))
            return
        await self._send(Switched(id=req.id, info=engine.info, memory=engine.memory))

    async def _shut_down(self) -> None:
        for cancel in self._cancels.values():
            cancel.set()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=10)
        if self._engine is not None:
            await self._engine.close()
        with contextlib.suppress(ConnectionError):
            await self._send(Closed())


async def run(stdin_fd: int, out_fd: int) -> None:
    reader, writer = await pipe_streams(os.fdopen(stdin_fd, "rb", buffering=0),
                                        os.fdopen(out_fd, "wb", buffering=0))
    await EngineServer(writer).serve(reader)
    writer.close()


def main() -> int:
    # Ctrl+C reaches the whole foreground process group; only the app decides when
    # this process ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out_fd = os.dup(1)
    os.dup2(2, 1)
    asyncio.run(run(0, out_fd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
