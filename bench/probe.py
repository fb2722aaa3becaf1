"""The measurements ``kvchat bench`` makes, each in a fresh child process.

llama.cpp's OpenMP workers keep spinning for a while after a decode, so a second
llama.cpp caller in the same process is measured against the first one's idle
spinners (measured here: 0.64x). Every measurement therefore runs alone in a new
process: ``python -m bench.probe KIND SETTINGS_JSON ...`` prints one JSON
object on its last stdout line.

Kinds: ``plan`` (the load settings both anchors get), ``raw`` (llama-cpp-python's
``Llama.generate``), ``engine`` (kvchat's ``LocalEngine.chat``), ``profile`` (the
engine with timers around llama_decode and the sampler), ``bandwidth`` (a memory copy
on the device the weights live on).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.config import LoadSettings, Sample, fit_prompt


def plan(model: str, n_ctx: int, n_threads: int, n_batch: int, n_ubatch: int,
         n_gpu_layers: int, budget: str | None, flash_attn: bool) -> dict[str, Any]:
    """Resolve the settings through kvchat's memory plan (as the engine would load),
    plus the weights each decoded token reads on the GPU and on the CPU."""
    from bench.bandwidth import bytes_read_per_token
    from engine.config import ModelConfig
    from engine.model.devices import compute_backend
    from engine.model.gguf_header import read_gguf_header
    from engine.model.loader import has_gpu, plan_for
    from engine.model.memory.planner import UnplannableModel

    header = read_gguf_header(model)
    config = ModelConfig(path=Path(model), n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_ubatch,
                         n_gpu_layers=n_gpu_layers, memory_budget=budget,
                         flash_attn=flash_attn, kv_type="f16")
    gpu = has_gpu()
    try:
        mem = plan_for(config, header)
        layers = mem.n_gpu_layers if gpu else 0
        planned, verdict = sum(mem.buffers.values()), mem.verdict
    except UnplannableModel as exc:
        layers = (header.n_layers + 1 if n_gpu_layers < 0 else n_gpu_layers) if gpu else 0
        planned, verdict = None, exc.message
    settings = LoadSettings(model=model, n_ctx=n_ctx, n_threads=n_threads, n_batch=n_batch,
                            n_ubatch=n_ubatch, n_gpu_layers=layers, n_layers=header.n_layers,
                            kv_type="f16", flash_attn=flash_attn,
                            backend=compute_backend(layers), planned_bytes=planned,
                            verdict=verdict)
    gpu_bytes, cpu_bytes, counted = bytes_read_per_token(header, layers)
    return {"settings": asdict(settings), "name": header.name,
            "file_bytes": header.file_bytes, "gpu_bytes_per_token": gpu_bytes,
            "cpu_bytes_per_token": cpu_bytes, "counted": counted}


def _chat_prompt(settings: LoadSettings, prompt: str, model: Any) -> tuple[str, Any]:
    """The engine's own rendering of one user turn, so raw gets the same tokens."""
    from engine.api import ChatMessage
    from engine.config import ModelConfig
    from engine.model.gguf_header import read_gguf_header
    from engine.model.loader import _chat_format

    fmt = _chat_format(ModelConfig(path=Path(settings.model)),
                       read_gguf_header(settings.model), model)
    return fmt.render([ChatMessage(role="user", content=prompt)]), fmt


def raw(settings: LoadSettings, prompt_tokens: int, tokens: int) -> Sample:
    """llama-cpp-python's high-level loop: ``Llama(...)`` and ``generate``, greedy.

    End of generation is banned with llama.cpp's native logit-bias sampler placed
    in front of ``generate``'s own chain (a Python ``logits_processor`` would add a
    per-token numpy pass over the vocabulary that is not llama-cpp-python's own
    cost; kvchat's engine bans it the same native way).
    """
    import llama_cpp
    from llama_cpp import _internals

    from engine.api import ChatMessage
    from engine.model.memory.budget import process_rss

    class _Llama(llama_cpp.Llama):
        prefill_end = 0.0
        eog: tuple[int, ...] = ()

        def _init_sampler(self, **kwargs: Any) -> _internals.LlamaSampler:
            sampler = _internals.LlamaSampler()
            sampler.add_logit_bias(self.n_vocab(), {t: float("-inf") for t in self.eog})
            sampler.add_penalties(self.n_vocab(), self.last_n_tokens_size, 1.0, 0.0, 0.0)
            sampler.add_greedy()  # generate's own chain at temp 0, repeat penalty 1
            return sampler

        def eval(self, tokens: Any) -> None:
            super().eval(tokens)
            if not self.prefill_end:
                self.prefill_end = time.perf_counter()

    llm = _Llama(settings.model, n_ctx=settings.n_ctx, n_threads=settings.n_threads,
                 n_threads_batch=settings.n_threads, n_batch=settings.n_batch,
                 n_ubatch=settings.n_ubatch, n_gpu_layers=settings.n_gpu_layers,
                 flash_attn=settings.flash_attn, no_perf=True, verbose=False)
    _, fmt = _chat_prompt(settings, "-", llm._model)
    user = fit_prompt(lambda t: len(llm._model.tokenize(
        fmt.render([ChatMessage(role="user", content=t)]).encode(), add_bos=False,
        special=True)), prompt_tokens)
    text = fmt.render([ChatMessage(role="user", content=user)])
    # Scanned before the clock starts, as the engine scans it once per model.
    llm.eog = tuple(t for t in range(llm.n_vocab())
                    if llama_cpp.llama_vocab_is_eog(llm._model.vocab, t))
    ids = llm.tokenize(text.encode(), add_bos=True, special=True)
    if len(ids) > 1 and ids[0] == ids[1] == llm.token_bos():
        ids = ids[1:]  # as the engine does: the template wrote BOS and so did the tokenizer
    stamps: list[float] = []
    started = time.perf_counter()
    for _token in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0):
        stamps.append(time.perf_counter())
        if len(stamps) == tokens:
            break
    prefill_s = llm.prefill_end - started
    sample = Sample(path="raw", prompt_tokens=len(ids), completion_tokens=len(stamps),
                    ttft_s=stamps[0] - started, prompt_tokens_per_s=len(ids) / prefill_s,
                    decode_tokens_per_s=(len(stamps) - 1) / (stamps[-1] - stamps[0]),
                    rss_bytes=process_rss(), gpu_used_bytes=_gpu_used())
    llm.close()
    return sample


async def engine(settings: LoadSettings, prompt_tokens: int, tokens: int,
                 profile: bool = False) -> Sample:
    """kvchat's engine through its public API, as ``kvchat ask`` drives it."""
    from engine.api import ChatMessage, ChatRequest
    from engine.backends.local import LocalEngine
    from engine.config import CacheConfig, ModelConfig, SamplingConfig, SpeculativeConfig
    from engine.events import Done, TokenChunk
    from engine.model.memory.budget import process_rss

    eng = LocalEngine(ModelConfig(
        path=Path(settings.model), n_ctx=settings.n_ctx, n_threads=settings.n_threads,
        n_batch=settings.n_batch, n_ubatch=settings.n_ubatch,
        n_gpu_layers=settings.n_gpu_layers, kv_type=settings.kv_type,  # type: ignore[arg-type]
        flash_attn=settings.flash_attn),
        # Plain decoding, as llama-bench and the raw loop do: speculation's gain is a
        # separate figure (``--extras``), and a random-weight shape has nothing to copy.
        speculative=SpeculativeConfig(mode="off"),
        # No saved states: the previous repetition's reply (the same prompt), saved at
        # its close, would be restored instead of evaluated, flattering TTFT and prefill.
        cache=CacheConfig(enabled=False))
    await eng.start()
    fmt = await eng.run_on_engine_thread(lambda gen: gen.lm.chat_format)
    prompt = fit_prompt(lambda t: eng.count_tokens(
        fmt.render([ChatMessage(role="user", content=t)])) or 0, prompt_tokens)
    # The end-of-generation scan that banning EOS needs happens once per model: done
    # before the clock starts, as on the raw side (normal replies never need it).
    await eng.run_on_engine_thread(lambda gen: gen.lm.eog_tokens())
    timers = await eng.run_on_engine_thread(_install_timers) if profile else None
    sampling = SamplingConfig(temperature=0.0, max_tokens=tokens)
    done: Done | None = None
    first = last = 0.0
    started = time.perf_counter()
    request = ChatRequest(messages=(ChatMessage(role="user", content=prompt),),
                          sampling=sampling, ignore_eos=True)
    async for event in eng.chat(request):
        if isinstance(event, TokenChunk):
            last = time.perf_counter()
            first = first or last
        elif isinstance(event, Done):
            done = event
    rss, gpu = process_rss(), _gpu_used()
    await eng.close()
    if done is None or done.completion_tokens != tokens:
        raise RuntimeError(f"the engine stopped early: {done}")
    extra = {"consumer_tokens_per_s": (tokens - 1) / (last - first)}
    if timers is not None:
        extra.update(timers.per_token(done.completion_tokens - 1, last - first))
    return Sample(path="profile" if profile else "engine", prompt_tokens=done.prompt_tokens,
                  completion_tokens=done.completion_tokens, ttft_s=first - started,
                  prompt_tokens_per_s=done.prefill_tokens_per_s,
                  decode_tokens_per_s=done.tokens_per_s, rss_bytes=rss,
                  gpu_used_bytes=gpu, extra=extra)


class _Timers:
    """Seconds spent inside llama_decode and inside the sampler during the decode.

    Wraps the loaded context's ``decode`` (made synchronous) and each sampler's
    ``sample`` on the instances (two clock reads per call, ~1 us): what is left of the
    wall time is the engine's own Python work per token (events, detokenizing,
    bookkeeping).
    """

    def __init__(self) -> None:
        self.decode_s = 0.0
        self.sample_s = 0.0

    def per_token(self, decoded: int, wall_s: float) -> dict[str, float]:
        per = 1e3 / max(decoded, 1)
        # The prefill's llama_decode calls happen before the first token: not counted.
        return {"decode_ms_per_token": self.decode_s * per,
                "sample_ms_per_token": self.sample_s * per,
                "other_ms_per_token": (wall_s - self.decode_s - self.sample_s) * per,
                "wall_ms_per_token": wall_s * per}


def _install_timers(gen: Any) -> _Timers:
    """Wrap ``gen``'s context and sampler (on the engine thread, between replies)."""
    import llama_cpp

    timers = _Timers()
    ctx_decode = gen.lm.ctx.decode
    make_sampler = gen.sampler_for
    decoding = [False]

    def decode(batch: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return ctx_decode(batch)
        finally:
            # A GPU backend returns from llama_decode before the graph has run; wait
            # here, or the wait lands in the sampler's time (it reads the logits).
            llama_cpp.llama_synchronize(gen.lm.ctx.ctx)
            if decoding[0]:
                timers.decode_s += time.perf_counter() - t0

    def sampler_for(req: Any) -> Any:
        sampler = make_sampler(req)
        inner = sampler.sample

        def sample(ctx: Any, idx: int) -> int:
            t0 = time.perf_counter()
            token = inner(ctx, idx)
            if decoding[0]:
                timers.sample_s += time.perf_counter() - t0
            decoding[0] = True  # the first sample ends the prefill
            return token

        sampler.sample = sample
        return sampler

    gen.lm.ctx.decode = decode
    gen.sampler_for = sampler_for
    return timers


def bandwidth(on_gpu: bool, n_bytes: int) -> dict[str, Any]:
    from bench.bandwidth import cpu_copy_bandwidth, cuda_copy_bandwidth

    result: dict[str, Any] = {"cpu_bytes_per_s": cpu_copy_bandwidth(n_bytes)}
    if on_gpu:
        result.update(cuda_copy_bandwidth(2 * n_bytes))
    return result


def _gpu_used() -> int | None:
    from engine.model.devices import query_devices

    for dev in query_devices():
        if dev.kind == "gpu" and dev.total_bytes:
            return dev.total_bytes - dev.free_bytes
    return None


def main(argv: list[str]) -> int:
    kind, payload = argv[0], json.loads(argv[1])
    if kind == "plan":
        result: Any = plan(**payload)
    elif kind == "bandwidth":
        result = bandwidth(**payload)
    else:
        settings = LoadSettings(**payload["settings"])
        if kind == "raw":
            result = asdict(raw(settings, payload["prompt_tokens"], payload["tokens"]))
        else:
            result = asdict(asyncio.run(engine(settings, payload["prompt_tokens"],
                                               payload["tokens"], profile=kind == "profile")))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
