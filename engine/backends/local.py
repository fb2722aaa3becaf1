"""The local llama.cpp backend: one thread owns the model, asyncio sees events.

llama.cpp contexts are not thread-safe, so every call that touches the model runs
on one worker thread, fed by a job queue. Results cross back into asyncio through
futures (load, close) and an :class:`EventChannel` (replies).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from engine.api import ChatEngine, ChatRequest, ModelAnswer, ModelChoice, check_open
from engine.backends.batched import BatchRunner
from engine.backends.channel import EventChannel
from engine.backends.model_switch import check_switch, list_choices
from engine.cache.pool import StateCache
from engine.config import (
    CacheConfig,
    KVCacheConfig,
    ModelConfig,
    SamplingConfig,
    SpeculativeConfig,
)
from engine.decode.generator import Generator
from engine.decode.speculation import build_controller
from engine.errors import EngineClosed, KvchatError, ModelLoadError
from engine.events import Error, Event, MemorySnapshot, ModelLoaded
from engine.model.batch_invariance import wants_invariance
from engine.model.loader import LoadedModel, has_gpu, load_model
from engine.routing.model_fallback import RouteClassifier

log = logging.getLogger("kvchat.engine")

T = TypeVar("T")


@dataclass
class _Job:
    run: Callable[[], Any]
    cancel: threading.Event
    future: concurrent.futures.Future[Any] = field(default_factory=concurrent.futures.Future)


class LocalEngine(ChatEngine):
    generates_on_thread = True

    def __init__(self, model: ModelConfig, sampling: SamplingConfig | None = None,
                 kv: KVCacheConfig | None = None,
                 speculative: SpeculativeConfig | None = None,
                 cache: CacheConfig | None = None) -> None:
        self._model_config = model
        self._default_sampling = sampling or SamplingConfig()
        self._kv_policy = kv or KVCacheConfig()
        # Saved conversation states, for every model this engine loads (engine/cache/).
        self._states = StateCache(cache)
        self._spec_config = speculative or SpeculativeConfig()
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lm: LoadedModel | None = None
        self._gen: Generator | None = None
        self._batch: BatchRunner | None = None
        """With ``parallel`` > 1: every reply, decoded together (engine/batch/)."""
        self.parallel_replies = model.parallel
        self._info: ModelLoaded | None = None
        self._current: _Job | None = None
        self._classifier: RouteClassifier | None = None
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------

    @property
    def info(self) -> ModelLoaded | None:
        return self._info

    @property
    def memory(self) -> list[MemorySnapshot]:
        """The load's memory snapshots: planned, then measured (empty before start)."""
        lm = self._lm
        return list(lm.memory) if lm is not None else []

    async def start(self) -> ModelLoaded:
        if self._info is not None:
            return self._info
        return await asyncio.wrap_future(self._submit(self._load).future)

    async def close(self) -> None:
        if self._closed:
            return
        self.cancel()
        job = self._submit(self._shut_down)
        self._closed = True
        self._jobs.put(None)
        await asyncio.wrap_future(job.future)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    async def list_models(self, dirs: Sequence[str | Path] = ()) -> list[ModelChoice]:
        check_open(self._closed)
        # Headers and plans only: off the engine thread, so a reply is not held up.
        return await asyncio.to_thread(list_choices, self._model_config, dirs, self._lm)

    async def switch_model(self, path: Path | str) -> ModelLoaded:
        check_open(self._closed)
        return await asyncio.wrap_future(self._submit(lambda: self._switch(Path(path))).future)

    def cancel(self) -> None:
        job = self._current
        if job is not None:
            job.cancel.set()
        if self._batch is not None:
            self._batch.cancel_all()

    # -- replies ------------------------------------------------------------------

    def chat(self, request: ChatRequest) -> AsyncIterator[Event]:
        check_open(self._closed)
        return self.stream(request, threading.Event())

    def answers(self, request: ChatRequest, n: int,
                cancel: threading.Event | None = None) -> AsyncIterator[Event]:
        """``n`` answers to ``request`` from one evaluation of its prompt, decoded
        together; their events carry ``reply`` 0..n-1. Needs ``parallel`` >= ``n``."""
        check_open(self._closed)
        if n > self.parallel_replies:
            raise KvchatError(f"{n} answers at once need {n} sequences: load the model "
                              f"with --parallel {n} (it has {self.parallel_replies})")
        return self.stream(request, cancel or threading.Event(), n=n)

    def count_tokens(self, text: str) -> int | None:
        lm = self._lm
        # Tokenizing reads only the vocabulary, never the context: safe off the thread.
        return len(lm.tokenize(text, add_bos=False)) if lm is not None else None

    async def classify(self, text: str, routes: Sequence[str],
                       descriptions: dict[str, str]) -> ModelAnswer | None:
        if self._closed or self._lm is None:
            return None
        return await asyncio.wrap_future(
            self._submit(lambda: self._classify(text, routes, descriptions)).future)

    def _classify(self, text: str, routes: Sequence[str],
                  descriptions: dict[str, str]) -> ModelAnswer | None:
        if self._lm is None:
            return None
        if self._classifier is None:  # made on first use: most sessions never need it
            self._classifier = RouteClassifier(self._lm)
        return self._classifier.classify(text, routes, descriptions)

    async def stream(self, request: ChatRequest, cancel: threading.Event,
                     min_gap_s: float = 0.0, n: int = 1) -> AsyncIterator[Event]:
        """``chat``, stopped by setting ``cancel`` (from any thread, before or while it
        runs): only this reply stops (the engine process cancels one reply by its id
        this way), where :meth:`cancel` stops every reply running. Events come at most every
        ``min_gap_s``, tokens merged (:class:`EventChannel`). A request without
        sampling gets this engine's default here."""
        request = request.with_default_sampling(self._default_sampling)
        channel = EventChannel(asyncio.get_running_loop(), min_gap_s, replies=n)
        job = self._submit(lambda: self._reply(request, channel, cancel, n), cancel)
        finished = False
        try:
            async for event in channel:
                yield event
            finished = True
        finally:
            if not finished:
                job.cancel.set()  # the consumer left early: stop generating for nobody

    def _reply(self, request: ChatRequest, channel: EventChannel,
               cancel: threading.Event, n: int = 1) -> None:
        if self._gen is None:
            for k in range(n):
                channel.put(Error(code="not_loaded", message="the model is not loaded",
                                  reply=k if n > 1 else None))
            return
        if self._batch is not None:  # joins the batch; the serve loop steps it
            self._batch.join(request, channel.put, cancel, n)
            return
        try:
            self._gen.run(request, channel.put, cancel)
        except KvchatError as exc:
            channel.put(Error(code=exc.code, message=exc.message))
        except Exception as exc:  # never let the engine thread die with a reply open
            log.exception("reply failed")
            channel.put(Error(code="internal", message=f"{type(exc).__name__}: {exc}"))

    # -- the engine thread ----------------------------------------------------------

    async def run_on_engine_thread(self, fn: Callable[[Generator], T]) -> T:
        """Run ``fn`` on the engine thread, between replies, with the loaded model's
        generator, and return what it returns: the door for tests and benchmarks that
        read or time the llama context directly (it is not thread-safe, so nothing
        else may touch it). Raises EngineClosed once closed, and KvchatError before
        the model is loaded."""
        def run() -> T:
            if self._gen is None:
                raise KvchatError("the model is not loaded")
            return fn(self._gen)

        return await asyncio.wrap_future(self._submit(run).future)

    def _submit(self, run: Callable[[], Any], cancel: threading.Event | None = None) -> _Job:
        if self._closed:
            raise EngineClosed("the engine is closed")
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="kvchat-engine",
                                            daemon=True)
            self._thread.start()
        job = _Job(run, cancel=cancel or threading.Event())
        self._jobs.put(job)
        return job

    def _next_job(self) -> _Job | None:
        """The next job; while the batch has replies, one step of it between jobs."""
        while (batch := self._batch) is not None and batch.busy:
            try:
                return self._jobs.get_nowait()
            except queue.Empty:
                batch.step()
        return self._jobs.get()

    def _serve(self) -> None:
        while (job := self._next_job()) is not None:
            if not job.future.set_running_or_notify_cancel():
                continue
            self._current = job
            try:
                job.future.set_result(job.run())
            except BaseException as exc:
                job.future.set_exception(exc)
            finally:
                self._current = None

    def _load(self) -> ModelLoaded:
        if self._lm is None:
            invariant = wants_invariance(self._model_config,
                                         speculating=self._spec_config.mode != "off",
                                         has_gpu=has_gpu())
            self._lm = load_model(self._model_config, invariant=invariant)
            try:
                spec = build_controller(self._spec_config, self._lm, self._model_config)
            except KvchatError:
                self._lm.close()
                self._lm = None
                raise
            info = self._lm.info
            # The greedy argmax moves into the graph where the output layer runs on a
            # GPU: there it saves a device round trip per token; on a CPU backend it
            # would only move the same scan between threads.
            in_graph = self._model_config.greedy_in_graph
            on_gpu = info.n_gpu_layers > info.n_layers
            self._gen = Generator(self._lm, self._kv_policy, spec, states=self._states,
                                  greedy_in_graph=in_graph == "on" or (
                                      in_graph == "auto" and on_gpu))
            self._gen.warm_up()
            if self._model_config.parallel > 1:
                self._batch = BatchRunner(self._lm, self._model_config.parallel,
                                          self._kv_policy, self._spec_config,
                                          states=self._states, overlap=info.output_on_gpu)
            self._info = info
        assert self._info is not None
        return self._info

    def _switch(self, path: Path) -> ModelLoaded:
        """On the engine thread, between replies: check, free, load; the old model back
        if the new one fails."""
        previous = self._model_config
        config = previous.model_copy(update={"path": path})
        check_switch(config, self._lm)
        had_model = self._lm is not None
        old_name = self._info.name if self._info is not None else "the previous model"
        # Freed first: a switch never holds two models. The new Generator starts with
        # an empty KV cache, so nothing the old model evaluated is reused.
        self._unload()
        self._info = None
        self._model_config = config
        problem = self._try_load()
        if problem is None:
            assert self._info is not None
            return self._info
        self._model_config = previous
        failed = f"cannot load {path.name}: {problem}"
        if not had_model:
            raise ModelLoadError(f"{failed}; no model is loaded")
        again = self._try_load()
        if again is not None:
            raise ModelLoadError(f"{failed}; loading {old_name} again failed too "
                                 f"({again}): no model is loaded")
        assert self._info is not None
        raise ModelLoadError(f"{failed}; {self._info.name} is loaded again")

    def _try_load(self) -> str | None:
        """Load ``_model_config``; None when it loaded, else why not, with whatever the
        attempt left freed again."""
        try:
            self._load()
            return None
        except Exception as exc:  # whatever failed, the engine must stay usable
            if not isinstance(exc, KvchatError):
                log.exception("loading %s failed", self._model_config.path)
            self._unload()
            self._info = None
            return exc.message if isinstance(exc, KvchatError) else f"{type(exc).__name__}: {exc}"

    def _shut_down(self) -> None:
        self._unload()  # saves the live conversation's state
        self._states.close()  # and the disk tier keeps what RAM holds

    def _unload(self) -> None:
        if self._batch is not None:
            self._batch.close()
            self._batch = None
        if self._classifier is not None:
            self._classifier.close()
            self._classifier = None
        if self._gen is not None:
            self._gen.close()
            self._gen = None
        lm, self._lm = self._lm, None  # count_tokens, off this thread, sees None first
        if lm is not None:
            lm.close()

