"""The server anchor of ``kvchat bench --parallel``: llama-cpp-python's own server
(``python -m llama_cpp.server``) answering the same N concurrent requests.

It runs from a Python given by the caller (``--server-python``: a virtual environment
with llama-cpp-python and its ``server`` extras, kept apart from kvchat's), one fresh
server process per measurement, on 127.0.0.1, with the same model file, context,
threads, batch sizes and flash attention. The requests are the engine's prompts as
chat messages (the server renders them with the model's template), greedy, exactly
``tokens`` long: end of generation is banned through the request's ``logit_bias``
(which that server applies in Python, once per token: its own cost of the request).
The server decodes one request at a time (its model lock) and is told not to cut a
streaming reply short when the next request arrives (``--interrupt_requests False``).
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.config import LoadSettings
from engine.errors import KvchatError

STARTUP_S = 120.0


class ServerAnchorFailed(KvchatError):
    code = "bench_failed"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _command(python: Path, settings: LoadSettings, port: int) -> list[str]:
    return [str(python), "-m", "llama_cpp.server", "--model", settings.model,
            "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(settings.n_ctx),
            "--n_threads", str(settings.n_threads),
            "--n_threads_batch", str(settings.n_threads),
            "--n_batch", str(settings.n_batch), "--n_ubatch", str(settings.n_ubatch),
            "--n_gpu_layers", str(settings.n_gpu_layers),
            "--flash_attn", str(settings.flash_attn), "--interrupt_requests", "False",
            "--verbose", "False"]


def measure(python: Path, settings: LoadSettings, prompts: list[str], tokens: int,
            eog: list[int]) -> list[dict[str, Any]]:
    """Start a server, send ``prompts`` at once, stop it; each reply's arrivals."""
    port = _free_port()
    proc = subprocess.Popen(_command(python, settings, port), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        return asyncio.run(_client(f"http://127.0.0.1:{port}", proc, prompts, tokens, eog))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _client(base: str, proc: subprocess.Popen[str], prompts: list[str], tokens: int,
                  eog: list[int]) -> list[dict[str, Any]]:
    import httpx

    async with httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(600.0)) as client:
        await _wait_ready(client, proc)
        # One short request first, as the engine's warm-up: the server's first reply
        # pays its first graphs.
        await _one(client, "Hello.", 4, eog, time.perf_counter())
        origin = time.perf_counter()
        return list(await asyncio.gather(*(_one(client, p, tokens, eog, origin)
                                           for p in prompts)))


async def _wait_ready(client: Any, proc: subprocess.Popen[str]) -> None:
    import httpx

    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (proc.stderr.read() if proc.stderr else "").strip().splitlines()
            raise ServerAnchorFailed("llama-cpp-python's server exited: "
                                     + (tail[-1] if tail else f"code {proc.returncode}"))
        try:
            if (await client.get("/v1/models")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.2)
    raise ServerAnchorFailed(f"llama-cpp-python's server did not answer in {STARTUP_S:.0f} s")


async def _one(client: Any, prompt: str, tokens: int, eog: list[int],
               origin: float) -> dict[str, Any]:
    """One streamed chat completion: (seconds since ``origin``, 1) per content chunk
    (that server streams one chunk per token)."""
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": tokens,
            "temperature": 0.0, "top_k": 1, "repeat_penalty": 1.0, "stream": True,
            "logit_bias": {str(t): -1e9 for t in eog}}
    stamps: list[tuple[float, int]] = []
    finish = None
    sent = time.perf_counter() - origin
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise ServerAnchorFailed(f"the server answered {response.status_code}: "
                                     f"{(await response.aread())[:200]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choice = json.loads(line[6:])["choices"][0]
            if choice.get("delta", {}).get("content"):
                stamps.append((time.perf_counter() - origin, 1))
            finish = choice.get("finish_reason") or finish
    return {"sent_s": sent, "stamps": stamps, "done": {"finish_reason": finish}}
