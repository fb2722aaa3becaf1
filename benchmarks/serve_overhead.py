"""What ``kvchat serve`` costs a reply: the same greedy replies generated in process
(``LocalEngine``, the anchor) and through ``kvchat serve`` over loopback HTTP, by
kvchat's typed event stream and by OpenAI's SSE stream, timed by the client.

Each reply: one fixed prompt, ``--tokens`` tokens with end-of-turn banned, greedy. The
client's decode rate is the tokens after the first over the time from the first to
the last arriving; time to first token is from sending to the first token arriving.
Medians over ``--runs`` replies after one warm-up, then the served ones as ratios of
the in-process anchor. The engine and the server run one after the other, never
together.

    .venv/bin/python benchmarks/serve_overhead.py [--tokens 128] [--runs 5] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.api import ChatMessage, ChatRequest  # noqa: E402
from engine.backends.local import LocalEngine  # noqa: E402
from engine.config import ModelConfig, SamplingConfig  # noqa: E402
from engine.events import Done, TokenChunk, parse_event  # noqa: E402

PROMPT = "Tell me a long story about a lighthouse keeper."

ENGINE_RATES: list[float] = []
"""The server's own decode rate (its ``done``) for each typed-stream reply."""

Timing = tuple[float, float]
"""Seconds to the first token, and tokens per second after it."""


def _rate(sent: float, arrivals: list[tuple[float, int]]) -> Timing:
    first, last = arrivals[0][0], arrivals[-1][0]
    after_first = sum(n for _, n in arrivals) - arrivals[0][1]
    return first - sent, after_first / (last - first) if last > first else 0.0


async def in_process(tokens: int) -> Callable[[], Coroutine[Any, Any, Timing]]:
    engine = LocalEngine(ModelConfig(), SamplingConfig(temperature=0.0, seed=0,
                                                       max_tokens=tokens))
    await engine.start()
    request = ChatRequest(messages=(ChatMessage(role="user", content=PROMPT),),
                          ignore_eos=True)

    async def one() -> Timing:
        sent, arrivals = time.perf_counter(), []
        async for event in engine.chat(request):
            if isinstance(event, TokenChunk):
                arrivals.append((time.perf_counter(), len(event.token_ids)))
        return _rate(sent, arrivals)

    one.engine = engine  # type: ignore[attr-defined]
    return one


async def typed(client: httpx.AsyncClient, tokens: int) -> Timing:
    body = {"messages": [{"role": "user", "content": PROMPT}], "ignore_eos": True,
            "sampling": {"temperature": 0, "seed": 0, "max_tokens": tokens}}
    sent, arrivals = time.perf_counter(), []
    async with client.stream("POST", "/kvchat/v1/chat", json=body) as response:
        async for line in response.aiter_lines():
            if not line.strip():
                continue
            event = parse_event(line)
            if isinstance(event, TokenChunk):
                arrivals.append((time.perf_counter(), len(event.token_ids)))
            elif isinstance(event, Done):
                ENGINE_RATES.append(event.tokens_per_s)
    return _rate(sent, arrivals)


async def openai_sse(client: httpx.AsyncClient, tokens: int) -> Timing:
    """Chunks carry no token ids: the rate is the usage's completion tokens after the
    first over the time from the first text chunk to the last."""
    body = {"messages": [{"role": "user", "content": PROMPT}], "ignore_eos": True,
            "temperature": 0, "seed": 0, "max_tokens": tokens, "stream": True}
    sent, times, completion = time.perf_counter(), [], 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[len("data: "):])
            if chunk.get("usage"):
                completion = chunk["usage"]["completion_tokens"]
            elif chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                times.append(time.perf_counter())
    span = times[-1] - times[0]
    return times[0] - sent, (completion - 1) / span if span > 0 else 0.0


def median(runs: list[Timing]) -> dict[str, float]:
    return {"ttft_s": round(statistics.median(r[0] for r in runs), 4),
            "tokens_per_s": round(statistics.median(r[1] for r in runs), 1)}


async def measure(tokens: int, runs: int) -> dict[str, Any]:
    one = await in_process(tokens)
    await one()
    anchor = median([await one() for _ in range(runs)])
    await one.engine.close()  # type: ignore[attr-defined]
    with tempfile.TemporaryDirectory() as home:
        log = Path(home) / "serve.log"
        with open(log, "wb") as err:
            proc = subprocess.Popen(
                [str(Path(sys.executable).with_name("kvchat")), "serve", "--port", "0"],
                stderr=err, stdout=subprocess.DEVNULL, env={**os.environ, "KVCHAT_HOME": home})
            try:
                url = _ready(log, proc)
                async with httpx.AsyncClient(base_url=url, timeout=120) as client:
                    await typed(client, tokens)
                    ENGINE_RATES.clear()
                    served = median([await typed(client, tokens) for _ in range(runs)])
                    sse = median([await openai_sse(client, tokens) for _ in range(runs)])
            finally:
                proc.terminate()
                proc.wait(timeout=60)
    return {"tokens": tokens, "runs": runs, "machine": platform.machine(),
            "cores": os.cpu_count(), "in_process": anchor, "typed_stream": served,
            "openai_sse": sse,
            "server_engine_tokens_per_s": round(statistics.median(ENGINE_RATES), 1),
            "typed_rate_ratio": round(served["tokens_per_s"] / anchor["tokens_per_s"], 3),
            "sse_rate_ratio": round(sse["tokens_per_s"] / anchor["tokens_per_s"], 3),
            "typed_ttft_extra_ms": round((served["ttft_s"] - anchor["ttft_s"]) * 1000, 1),
            "sse_ttft_extra_ms": round((sse["ttft_s"] - anchor["ttft_s"]) * 1000, 1)}


def _ready(log: Path, proc: subprocess.Popen[bytes]) -> str:
    for _ in range(600):
        found = re.search(r"on (http://[\d.]+:\d+)/v1 ", log.read_text(errors="replace"))
        if found:
            return found.group(1)
        if proc.poll() is not None:
            raise SystemExit(f"kvchat serve exited: {log.read_text()}")
        time.sleep(0.2)
    raise SystemExit("kvchat serve did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = asyncio.run(measure(args.tokens, args.runs))
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
