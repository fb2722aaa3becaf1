"""The measurements ``kvchat bench --parallel`` makes, each in a fresh child process.

``python -m bench.parallel_probe KIND SETTINGS_JSON`` prints one JSON object on its
last stdout line (as ``bench.probe`` does, for the same reason: llama.cpp's spinning
workers make a second load in one process a worse measurement).

Kinds:

- ``concurrent``: kvchat's engine loaded with ``parallel = n`` (the app's path:
  ``LocalEngine``, one ``chat`` call per reply, all awaited together), N replies of
  exactly ``tokens`` tokens (end of generation banned) to N different prompts of about
  ``prompt_tokens`` tokens, started at once. Each reply's token arrival times as its
  consumer saw them, and the engine's own figures from its ``Done`` event.
- ``join``: ``n - 1`` replies streaming, then one reply with a long prompt joins; the
  streaming replies' arrival times around it (the longest gap while it joins).
- ``profile``: ``concurrent`` with timers around a batch step's parts (``n`` > 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench.config import LoadSettings, fit_prompt

WARMUP_TOKENS = 4


async def _start(settings: LoadSettings, parallel: int, kv_layout: str = "shared") -> Any:
    """kvchat's engine as the app loads it, with ``parallel`` sequences; plain decoding
    (speculation runs on the single-sequence path only), no saved KV states."""
    from engine.backends.local import LocalEngine
    from engine.config import CacheConfig, ModelConfig, SpeculativeConfig

    eng = LocalEngine(ModelConfig(
        path=Path(settings.model), n_ctx=settings.n_ctx, n_threads=settings.n_threads,
        n_batch=settings.n_batch, n_ubatch=settings.n_ubatch,
        n_gpu_layers=settings.n_gpu_layers, kv_type=settings.kv_type,  # type: ignore[arg-type]
        flash_attn=settings.flash_attn, parallel=parallel,
        kv_layout=kv_layout),  # type: ignore[arg-type]
        speculative=SpeculativeConfig(mode="off"),
        # No saved states: an earlier repetition's reply, saved at its close, would be
        # restored instead of evaluating the prompt (every repetition starts cold).
        cache=CacheConfig(enabled=False))
    await eng.start()
    # The end-of-generation scan that banning EOS needs, once per model, off the clock.
    eog = await eng.run_on_engine_thread(lambda gen: sorted(gen.lm.eog_tokens()))
    return eng, [int(t) for t in eog]


async def _prompts(eng: Any, count: int, target_tokens: int, tag: str) -> list[str]:
    """``count`` user messages whose rendered prompts are about ``target_tokens`` long
    and differ from their first words on, so no reply reuses another's cells."""
    from engine.api import ChatMessage

    fmt = await eng.run_on_engine_thread(lambda gen: gen.lm.chat_format)
    out = []
    for k in range(count):
        head = f"{tag} {k + 1}. "
        body = fit_prompt(lambda t, head=head: eng.count_tokens(fmt.render(
            [ChatMessage(role="user", content=head + t)])) or 0, target_tokens)
        out.append(head + body)
    return out


async def _reply(eng: Any, prompt: str, tokens: int, origin: float,
                 stop: asyncio.Event | None = None,
                 stamps: list[tuple[float, int]] | None = None) -> dict[str, Any]:
    """One reply through ``chat``: (seconds since ``origin``, tokens) per event as it
    arrived (into ``stamps`` when given, so a caller can watch it), and the engine's
    ``Done`` figures. ``stop`` set: leave early (the engine cancels the reply)."""
    from engine.api import ChatMessage, ChatRequest
    from engine.config import SamplingConfig
    from engine.events import Done, Error, TokenChunk

    request = ChatRequest(messages=(ChatMessage(role="user", content=prompt),),
                          sampling=SamplingConfig(temperature=0.0, max_tokens=tokens),
                          ignore_eos=True)
    stamps = [] if stamps is None else stamps
    done: dict[str, Any] = {}
    sent = time.perf_counter() - origin
    async with contextlib.aclosing(eng.chat(request)) as events:
        async for event in events:
            if isinstance(event, TokenChunk):
                stamps.append((time.perf_counter() - origin, len(event.token_ids)))
                if stop is not None and stop.is_set():
                    break  # closing the stream cancels the reply
            elif isinstance(event, Done):
                done = {k: getattr(event, k) for k in (
                    "finish_reason", "prompt_tokens", "evaluated_tokens",
                    "completion_tokens", "ttft_s", "tokens_per_s", "prefill_tokens_per_s",
                    "total_s")}
            elif isinstance(event, Error):
                raise RuntimeError(f"the reply failed: {event.code}: {event.message}")
    return {"sent_s": sent, "stamps": stamps, "done": done}


async def concurrent(settings: LoadSettings, prompt_tokens: int, tokens: int,
                     n: int, kv_layout: str = "shared") -> dict[str, Any]:
    eng, eog = await _start(settings, n, kv_layout)
    try:
        # Warm-up: n short replies together, so the first batched graphs (and a GPU's
        # kernels) are built before the clock starts, as llama-batched-bench warms up.
        warm = await _prompts(eng, n, 24, "Warm-up")
        await asyncio.gather(*(_reply(eng, p, WARMUP_TOKENS, 0.0) for p in warm))
        prompts = await _prompts(eng, n, prompt_tokens, "Ledger")
        before = await eng.run_on_engine_thread(lambda gen: _decoder_stats(eng))
        origin = time.perf_counter()
        replies = await asyncio.gather(*(_reply(eng, p, tokens, origin) for p in prompts))
        after = await eng.run_on_engine_thread(lambda gen: _decoder_stats(eng))
        stats = _stats_delta(before, after)
    finally:
        await eng.close()
    for r in replies:
        if r["done"].get("completion_tokens") != tokens:
            raise RuntimeError(f"a reply stopped early: {r['done']}")
    return {"n": n, "replies": replies, "prompts": prompts, "engine_stats": stats,
            "eog": eog}


def _decoder_stats(eng: Any) -> dict[str, Any] | None:
    """The batch decoder's own counters (steps, rows decoded, prompt tokens, seconds in
    ``llama_decode``), read on the engine thread; None where the engine decoded
    without one."""
    from dataclasses import asdict

    runner = getattr(eng, "_batch", None)
    decoder = getattr(runner, "decoder", None)
    stats = getattr(decoder, "stats", None)
    if stats is None:
        return None
    counters = asdict(stats)
    counters.pop("replies", None)
    return counters


def _stats_delta(before: dict[str, Any] | None, after: dict[str, Any] | None
                 ) -> dict[str, Any] | None:
    """What the measured replies added to the decoder's counters (the warm-up's
    excluded); the largest step is the whole run's."""
    if before is None or after is None:
        return None
    out = {k: v - before.get(k, 0) for k, v in after.items()
           if isinstance(v, int | float) and k != "max_rows"}
    out["max_rows"] = after.get("max_rows")
    if out.get("steps"):
        out["rows_per_step"] = out.get("rows_decoded", 0) / out["steps"]
    return out


async def join(settings: LoadSettings, prompt_tokens: int, tokens: int, n: int,
               join_tokens: int, kv_layout: str = "shared") -> dict[str, Any]:
    """``n - 1`` replies stream; once each has a quarter of its ``tokens``, a reply
    with a ``join_tokens`` prompt joins (8 tokens); the streams stop once they have
    decoded 16 more tokens after its last one."""
    eng, _ = await _start(settings, n, kv_layout)
    try:
        warm = await _prompts(eng, n, 24, "Warm-up")
        await asyncio.gather(*(_reply(eng, p, WARMUP_TOKENS, 0.0) for p in warm))
        prompts = await _prompts(eng, n - 1, prompt_tokens, "Ledger")
        (long_prompt,) = await _prompts(eng, 1, join_tokens, "Chronicle")
        stop = asyncio.Event()
        seen: list[list[tuple[float, int]]] = [[] for _ in prompts]
        origin = time.perf_counter()
        streams = [asyncio.create_task(_reply(eng, p, tokens, origin, stop, s))
                   for p, s in zip(prompts, seen, strict=True)]
        await _until(streams, seen, lambda i, s: len(s) >= tokens // 4)
        joined = await _reply(eng, long_prompt, 8, origin)
        marks = [len(s) for s in seen]
        await _until(streams, seen, lambda i, s: len(s) >= marks[i] + 16)
        stop.set()
        replies = await asyncio.gather(*streams)
    finally:
        await eng.close()
    ended = any(r["done"] for r in replies)  # a stream that ran to max_tokens
    return {"n": n, "streams": replies, "joiner": joined, "join_prompt_tokens": join_tokens,
            "streams_ended_early": ended}


async def _until(streams: list[asyncio.Task[Any]], seen: list[list[tuple[float, int]]],
                 ready: Any) -> None:
    """Wait until every stream's arrivals satisfy ``ready`` (or a stream ended)."""
    while not all(ready(i, s) for i, s in enumerate(seen)) \
            and not any(t.done() for t in streams):
        await asyncio.sleep(0.002)


class _StepTimers:
    """Where a batch step's time goes, for steps that decode rows only (no prompt
    tokens): ``llama_decode`` made synchronous, sampling each row (its chain and the
    token's event), the decoder's own bookkeeping, and handing the events to the
    replies' channels (which the synchronous decode keeps from overlapping it)."""

    def __init__(self) -> None:
        self.steps = 0
        self.decode_s = self.sample_s = self.decoder_s = self.total_s = 0.0
        self._pure = False

    def per_step_ms(self) -> dict[str, float]:
        per = 1e3 / max(self.steps, 1)
        return {"steps": self.steps, "decode_ms": self.decode_s * per,
                "sample_ms": self.sample_s * per,
                "bookkeeping_ms": (self.decoder_s - self.decode_s - self.sample_s) * per,
                "deliver_ms": (self.total_s - self.decoder_s) * per,
                "step_ms": self.total_s * per}

    def install(self, eng: Any) -> None:
        """Wrap the batch runner's and decoder's methods on their instances (engine
        thread, between steps)."""
        import llama_cpp

        runner = eng._batch
        dec = runner.decoder
        ctx = dec.lm.ctx.ctx
        decode, sample, outer = dec.decode, dec.sample, runner.step
        launch, collect = dec.launch, dec.collect
        parts = {"decode": 0.0, "sample": 0.0, "decoder": 0.0}

        def timed_decode(prompts: int) -> None:
            self._pure = prompts == 0
            t0 = time.perf_counter()
            decode(prompts)
            llama_cpp.llama_synchronize(ctx)  # a GPU's decode returns before its graph ran
            parts["decode"] = time.perf_counter() - t0

        def timed_sample(decoding: Any) -> None:
            t0 = time.perf_counter()
            sample(decoding)
            parts["sample"] = time.perf_counter() - t0

        def timed_launch() -> None:
            t0 = time.perf_counter()
            launch()
            parts["decoder"] = time.perf_counter() - t0

        def timed_collect() -> Any:
            t0 = time.perf_counter()
            events = collect()
            parts["decoder"] += time.perf_counter() - t0
            return events

        def timed_outer() -> None:
            self._pure, t0 = False, time.perf_counter()
            outer()
            if self._pure:
                self.steps += 1
                self.decode_s += parts["decode"]
                self.sample_s += parts["sample"]
                self.decoder_s += parts["decoder"]
                self.total_s += time.perf_counter() - t0

        dec.decode, dec.sample, runner.step = timed_decode, timed_sample, timed_outer
        dec.launch, dec.collect = timed_launch, timed_collect


async def profile(settings: LoadSettings, prompt_tokens: int, tokens: int,
                  n: int, kv_layout: str = "shared") -> dict[str, Any]:
    """``concurrent`` once more with the step timers in place (their clock reads and
    the synchronous decode cost a little: a separate run, not the measured one)."""
    eng, _ = await _start(settings, n, kv_layout)
    try:
        warm = await _prompts(eng, n, 24, "Warm-up")
        await asyncio.gather(*(_reply(eng, p, WARMUP_TOKENS, 0.0) for p in warm))
        prompts = await _prompts(eng, n, prompt_tokens, "Ledger")
        timers = _StepTimers()
        await eng.run_on_engine_thread(lambda gen: timers.install(eng))
        origin = time.perf_counter()
        replies = await asyncio.gather(*(_reply(eng, p, tokens, origin) for p in prompts))
    finally:
        await eng.close()
    from bench.parallel_stats import run_figures

    return {"n": n, "aggregate_tokens_per_s": run_figures(replies)["aggregate_tokens_per_s"],
            **timers.per_step_ms()}


def main(argv: list[str]) -> int:
    kind, payload = argv[0], json.loads(argv[1])
    settings = LoadSettings(**payload.pop("settings"))
    if kind == "concurrent":
        result = asyncio.run(concurrent(settings, **payload))
    elif kind == "join":
        result = asyncio.run(join(settings, **payload))
    elif kind == "profile":
        result = asyncio.run(profile(settings, **payload))
    else:
        raise SystemExit(f"unknown kind {kind!r}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
