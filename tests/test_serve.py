"""``kvchat serve`` as a real subprocess on the default model, over real HTTP on
127.0.0.1: the OpenAI routes, kvchat's typed event stream, the queue, cancellation,
refusals, the key, the stop; and the scheduler on its own."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from engine.api import ChatMessage
from engine.backends.remote.engine import OpenAIEngine
from engine.config import EndpointConfig, SamplingConfig
from engine.events import Done, Event, Queued, TokenChunk, parse_event
from engine.serve.openai_api import StopWatcher
from engine.serve.scheduler import QueueFull, Scheduler, ServerClosing
from tests.conftest import chat_request, kvchat_exe, run_kvchat
from tests.openai_servers import HOST, free_port

KEY_VAR = "KVCHAT_SERVE_TEST_KEY"
KEY = "serve-test-key-7d1e0b"
QUESTION = "What is the capital of France?"


class ServeProcess:
    """``kvchat serve --port 0 ...``, its stderr in a file; ``url`` once ready."""

    def __init__(self, home: Path, *args: str, env: dict[str, str] | None = None) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.log = home / "serve.log"
        self._log = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [kvchat_exe(), "serve", "--port", "0", *args], stdout=subprocess.DEVNULL,
            stderr=self._log, env={**os.environ, "KVCHAT_HOME": str(home),
                                   "OMP_WAIT_POLICY": "PASSIVE", **(env or {})})
        self.url = ""

    def wait_ready(self, timeout: float = 120.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(r"on (http://[\d.]+:\d+)/v1 ", self.log_text())
            if found:
                self.url = found.group(1)
                return self.url
            if self.proc.poll() is not None:
                raise RuntimeError(f"kvchat serve exited: {self.log_text()}")
            time.sleep(0.2)
        raise RuntimeError(f"kvchat serve did not start: {self.log_text()}")

    def log_text(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """The default model, a queue of one, short replies by default."""
    srv = ServeProcess(tmp_path_factory.mktemp("serve"), "--max-queue", "1",
                       "--max-tokens", "16")
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()
    assert "Traceback" not in srv.log_text()


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def openai_body(text: str = QUESTION, **fields: Any) -> dict[str, Any]:
    return {"model": "any", "messages": [user(text)], "temperature": 0, "seed": 0,
            "max_tokens": 8, **fields}


def sse_payloads(lines: list[str]) -> list[str]:
    return [line[len("data: "):] for line in lines if line.startswith("data: ")]


def health(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/health", timeout=10).json()


# -- OpenAI's routes --------------------------------------------------------------------

def test_models_and_health(server: ServeProcess) -> None:
    models = httpx.get(f"{server.url}/v1/models", timeout=10)
    assert models.status_code == 200
    listing = models.json()
    assert listing["object"] == "list"
    assert listing["data"][0]["id"] == "SmolLM2-135M-Instruct.Q4_1"
    assert listing["data"][0]["owned_by"] == "kvchat"
    state = health(server.url)
    assert state["status"] == "ok" and state["model_loaded"] is True
    assert (state["in_flight"], state["queued"], state["capacity"], state["max_queue"]) \
        == (0, 0, 1, 1)


def test_chat_completion(server: ServeProcess) -> None:
    response = httpx.post(f"{server.url}/v1/chat/completions", json=openai_body(), timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "SmolLM2-135M-Instruct.Q4_1"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"].strip()
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["prompt_tokens"] > 5
    assert 1 <= usage["completion_tokens"] <= 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_streamed_chat_completion(server: ServeProcess) -> None:
    body = openai_body(stream=True, stream_options={"include_usage": True})
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body,
                      timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        payloads = sse_payloads(list(response.iter_lines()))
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = [c["choices"][0]["delta"]["content"] for c in chunks[1:-2]]
    assert content and "".join(content).strip()
    finish = chunks[-2]
    assert finish["choices"][0]["finish_reason"] in ("stop", "length")
    assert finish["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"] == []  # include_usage's chunk
    usage = chunks[-1]["usage"]
    assert len(content) <= usage["completion_tokens"] <= 8
    assert usage == finish["usage"]


def test_stop_string_ends_the_reply(server: ServeProcess) -> None:
    body = openai_body(stream=True, stop=[" "], max_tokens=16)
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body,
                      timeout=60) as response:
        chunks = [json.loads(p) for p in sse_payloads(list(response.iter_lines()))[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert text and " " not in text  # "The capital of..." ends before its first space
    plain = httpx.post(f"{server.url}/v1/chat/completions",
                       json=openai_body(stop="capital", max_tokens=16), timeout=60).json()
    assert "capital" not in plain["choices"][0]["message"]["content"]


def test_stop_strings_split_across_chunks() -> None:
    watch = StopWatcher(["o w", "xyz"])
    assert watch.feed("Hel") == "Hel"
    assert watch.feed("lo") == "l"  # "o" may start "o w"
    assert not watch.stopped
    assert watch.feed(" wor") == ""  # "Hell", then the stop
    assert watch.stopped
    plain = StopWatcher(["END"])
    assert plain.feed("abcE") == "abc"
    assert plain.feed("x") == "Ex"
    assert plain.flush() == ""


def test_response_format_json_schema(server: ServeProcess) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}},
              "required": ["ok"], "additionalProperties": False}
    body = openai_body("Is the sky blue? Answer in JSON.", max_tokens=64, response_format={
        "type": "json_schema", "json_schema": {"name": "answer", "schema": schema}})
    reply = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60).json()
    assert reply["choices"][0]["finish_reason"] == "stop"
    jsonschema.validate(json.loads(reply["choices"][0]["message"]["content"]), schema)


@pytest.mark.parametrize(("content", "headers", "status", "says"), [
    (b'{"messages": [', None, 400, "not valid JSON"),
    (b'{"model": "x"}', None, 400, "messages"),
    (b'[1, 2]', None, 400, "JSON object"),
    (b'{"messages": [{"role": "user", "content": "  "}]}', None, 400, "the prompt is empty"),
    (b'{"messages": [{"role": "user", "content": "caf\xe9 \xff"}]}', None, 400,
     "not valid UTF-8"),
    (b'{"messages": [{"role": "tool", "content": "x"}]}', None, 400, "role 'tool'"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "n": 2}', None, 400, "n:"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": -1}', None, 400,
     "temperature"),
    (b'{"messages": [{"role": "user", "content": "hi"}]}', {"content-type": "text/plain"},
     415, "application/json"),
])
def test_malformed_requests_get_a_json_4xx(server: ServeProcess, content: bytes,
                                           headers: dict[str, str] | None, status: int,
                                           says: str) -> None:
    response = httpx.post(f"{server.url}/v1/chat/completions", content=content,
                          headers=headers or {"content-type": "application/json"}, timeout=30)
    assert response.status_code == status
    error = response.json()["error"]
    assert says in error["message"]
    assert error["type"] == "invalid_request_error"


def test_bad_routes_and_typed_requests_get_json_errors(server: ServeProcess) -> None:
    missing = httpx.get(f"{server.url}/v2/nothing", timeout=10)
    assert missing.status_code == 404 and "no such route" in missing.json()["error"]["message"]
    wrong = httpx.post(f"{server.url}/health", timeout=10)
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "http_405"
    typed = httpx.post(f"{server.url}/kvchat/v1/chat", json={"messages": "hi"}, timeout=10)
    assert typed.status_code == 400 and "messages" in typed.json()["error"]["message"]
    empty = httpx.post(f"{server.url}/kvchat/v1/chat",
                       json={"messages": [user("")]}, timeout=10)
    assert empty.status_code == 400 and empty.json()["error"]["code"] == "prompt_empty"
    assert health(server.url)["status"] == "ok"
    assert "Traceback" not in server.log_text()


# -- several clients ----------------------------------------------------------------------

async def typed_events(client: httpx.AsyncClient, body: dict[str, Any]) -> list[Event]:
    async with client.stream("POST", "/kvchat/v1/chat", json=body) as response:
        assert response.status_code == 200
        return [parse_event(line) async for line in response.aiter_lines() if line.strip()]


async def until(check: Any, client: httpx.AsyncClient) -> None:
    for _ in range(600):
        if check((await client.get("/health")).json()):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the server never reached the state awaited")


async def test_second_client_waits_third_is_refused_and_a_leaver_is_cancelled(
        server: ServeProcess) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
        before = (await client.get("/health")).json()["replies"]
        long_body = openai_body("Write a very long story about a dragon.", stream=True,
                                max_tokens=1500, ignore_eos=True)
        async with client.stream("POST", "/v1/chat/completions", json=long_body) as first:
            lines = first.aiter_lines()
            async for line in lines:  # until the first words are out
                if '"content": "' in line and '"role"' not in line:
                    break
            second = asyncio.create_task(typed_events(client, {
                "messages": [user(QUESTION)],
                "sampling": {"temperature": 0, "max_tokens": 8}}))
            await until(lambda h: h["queued"] == 1, client)
            third = await client.post("/v1/chat/completions", json=openai_body())
            assert third.status_code == 429
            assert third.json()["error"]["code"] == "queue_full"
            assert third.json()["error"]["type"] == "rate_limit_error"
        # The first client has left mid-reply: the second goes on.
        events = await second
        assert isinstance(events[0], Queued)
        assert (events[0].position, events[0].in_flight) == (1, 1)
        assert isinstance(events[-1], Done) and events[-1].finish_reason in ("stop", "length")
        assert events[-1].token_count == "exact"
        fourth = await client.post("/v1/chat/completions", json=openai_body())
        assert fourth.status_code == 200
        after = (await client.get("/health")).json()
    assert after["replies"]["cancelled"] == before["cancelled"] + 1
    assert after["replies"]["refused"] == before["refused"] + 1
    assert (after["in_flight"], after["queued"]) == (0, 0)
    stopped = re.findall(r"\(openai stream\) cancelled: stopped after (\d+) tokens",
                         server.log_text())
    assert stopped and int(stopped[-1]) < 1500  # cancelled at once, not generated out


async def _first_words(lines: AsyncIterator[str]) -> float:
    """When the stream's first content chunk came (after its role chunk)."""
    async for line in lines:
        if '"content": "' in line and '"role"' not in line:
            return time.monotonic()
    raise AssertionError("the stream ended before any words")


async def test_parallel_server_streams_two_replies_at_once_and_frees_a_leaver(
        tmp_path: Path) -> None:
    """--parallel 2: two clients decode together in one batch (the second's words come
    while the first still streams, neither queued); the first leaves mid-reply, its
    sequence is freed at once, and the second is generated out, whole."""
    srv = ServeProcess(tmp_path / "parallel", "--parallel", "2", "--max-queue", "1")
    try:
        srv.wait_ready()
        async with httpx.AsyncClient(base_url=srv.url, timeout=120) as client:
            assert (await client.get("/health")).json()["capacity"] == 2
            leaver = openai_body("Write a very long story about a dragon.", stream=True,
                                 max_tokens=1500, ignore_eos=True)
            stayer = openai_body("Tell me about the sea.", stream=True, max_tokens=64,
                                 ignore_eos=True)
            async with client.stream("POST", "/v1/chat/completions", json=leaver) as first:
                first_lines = first.aiter_lines()
                await _first_words(first_lines)
                async with client.stream("POST", "/v1/chat/completions",
                                         json=stayer) as second:
                    second_lines = second.aiter_lines()
                    await _first_words(second_lines)
                    state = (await client.get("/health")).json()
                    assert (state["in_flight"], state["queued"]) == (2, 0)
                    async for line in first_lines:  # the first still streams alongside
                        if '"content": "' in line:
                            break
                    await first.aclose()  # the first client leaves mid-reply
                    await until(lambda h: h["in_flight"] == 1, client)
                    rest = sse_payloads([line async for line in second_lines])
            assert rest[-1] == "[DONE]"
            assert json.loads(rest[-2])["usage"]["completion_tokens"] == 64
            await until(lambda h: h["in_flight"] == 0, client)
    finally:
        srv.stop()
    stopped = re.findall(r"\(openai stream\) cancelled: stopped after (\d+) tokens",
                         srv.log_text())
    assert stopped and int(stopped[-1]) < 1500
    assert "Traceback" not in srv.log_text()


async def test_remote_engine_sees_typed_events_and_cancels(server: ServeProcess) -> None:
    engine = OpenAIEngine(EndpointConfig(base_url=f"{server.url}/v1"),
                          sampling=SamplingConfig(temperature=0.0, max_tokens=1500, seed=0))
    info = await engine.start()
    try:
        assert info.remote == "kvchat" and info.architecture == "llama"
        assert info.n_layers and info.kv_bytes
        assert [m.stage for m in engine.memory] == ["planned", "loaded"]
        events: list[Event] = []
        stream: AsyncIterator[Event] = engine.chat(chat_request(
            [ChatMessage(role="user", content="Tell me a long story about a cat.")],
            ignore_eos=True))
        async for event in stream:
            events.append(event)
            if isinstance(event, TokenChunk):
                engine.cancel()
        done = events[-1]
        assert isinstance(done, Done) and done.finish_reason == "cancelled"
        sent = sum(len(e.token_ids) for e in events if isinstance(e, TokenChunk))
        assert 0 < done.completion_tokens == sent < 1500
        assert {e.type for e in events} >= {"prompt", "kv", "token"}
        async with httpx.AsyncClient(base_url=server.url) as client:
            await until(lambda h: h["in_flight"] == 0, client)
    finally:
        await engine.close()


def test_ask_through_the_server_prints_typed_events(server: ServeProcess,
                                                    kvchat_home: Path) -> None:
    base = f"{server.url}/v1"
    plain = run_kvchat("ask", "--base-url", base, "--max-tokens", "8", "--temp", "0",
                       QUESTION, home=kvchat_home)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.strip()
    result = run_kvchat("ask", "--base-url", base, "--max-tokens", "8", "--temp", "0",
                        "--events", "jsonl", QUESTION, home=kvchat_home)
    assert result.returncode == 0, result.stderr
    events = [parse_event(line) for line in result.stdout.splitlines()]
    by_type = {e.type: e for e in events}
    assert by_type["model_loaded"].remote == "kvchat"  # type: ignore[union-attr]
    assert [e.stage for e in events if e.type == "memory"][:2] == ["planned", "loaded"]
    prompt, done = by_type["prompt"], by_type["done"]
    assert prompt.token_count == "exact"  # type: ignore[union-attr]
    assert isinstance(done, Done) and done.token_count == "exact"
    tokens = [e for e in events if isinstance(e, TokenChunk)]
    assert all(e.token_ids for e in tokens)
    assert done.completion_tokens == sum(len(e.token_ids) for e in tokens)
    assert done.prompt_tokens == prompt.prompt_tokens > 5  # type: ignore[union-attr]
    assert done.text == "".join(e.text for e in tokens)


async def test_the_app_attached_to_the_server_shows_its_panes(server: ServeProcess,
                                                              kvchat_home: Path) -> None:
    # As `kvchat --base-url URL/v1` builds it: the server's own memory snapshots and
    # layer split, and the KV cells its engine reports, not "unknown".
    from engine.config import KvchatConfig
    from engine.store import Store
    from tests.test_tui import wait_for
    from tui.app import KvchatApp
    from tui.messages import ModelReady, ReplyFinished
    from tui.widgets.memory_pane import MemoryPane
    from tui.widgets.status_line import StatusLine

    config = KvchatConfig(sampling=SamplingConfig(temperature=0.0, max_tokens=12))
    engine = OpenAIEngine(EndpointConfig(base_url=f"{server.url}/v1"),
                          sampling=config.sampling)
    app = KvchatApp(config, engine, Store(kvchat_home / "kvchat.db"), route="chat",
                    pinned=("max_tokens", "temperature"),
                    prefs_file=kvchat_home / "ui-prefs.json")
    seen: list[Any] = []
    async with app.run_test(size=(160, 48), message_hook=seen.append) as pilot:
        ready = await wait_for(seen, ModelReady, pilot)
        assert isinstance(ready, ModelReady)
        assert [m.stage for m in ready.memory] == ["planned", "loaded"]
        await pilot.click("#prompt")
        await pilot.press(*"Name a colour.")
        await pilot.press("enter")
        finished = await wait_for(seen, ReplyFinished, pilot)
        await pilot.pause()
        assert isinstance(finished, ReplyFinished)
        assert finished.done.token_count == "exact"
        layers = str(app.query_one(MemoryPane).query_one("#mem-layers").render())
        assert "layers 30:" in layers and "unknown" not in layers
        # The engine's own cell count: the prompt and the reply's tokens in its cache.
        assert app.query_one(StatusLine).ctx_used >= finished.done.prompt_tokens > 5


# -- starting and stopping ------------------------------------------------------------------

def test_port_in_use_is_one_line(kvchat_home: Path) -> None:
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_kvchat("serve", "--port", str(port), home=kvchat_home)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert f"port {port} on 127.0.0.1 is in use" in result.stderr


def test_other_address_needs_a_key(kvchat_home: Path) -> None:
    result = run_kvchat("serve", "--host", "0.0.0.0", "--port", str(free_port()),
                        home=kvchat_home)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "--api-key-env" in result.stderr
    unset = run_kvchat("serve", "--host", "0.0.0.0", "--api-key-env", "KVCHAT_NO_SUCH_VAR",
                       home=kvchat_home)
    assert unset.returncode == 2 and "KVCHAT_NO_SUCH_VAR is not set" in unset.stderr


def test_key_is_required_and_sigint_drains(tmp_path: Path) -> None:
    srv = ServeProcess(tmp_path / "keyed", "--host", "0.0.0.0", "--api-key-env", KEY_VAR,
                       env={KEY_VAR: KEY})
    try:
        srv.wait_ready()
        url = f"http://{HOST}:{srv.url.rsplit(':', 1)[1]}"
        assert httpx.get(f"{url}/health", timeout=10).status_code == 401
        wrong = httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer nope"},
                          timeout=10)
        assert wrong.status_code == 401
        assert wrong.json()["error"]["code"] == "invalid_api_key"
        auth = {"Authorization": f"Bearer {KEY}"}
        assert httpx.get(f"{url}/health", headers=auth, timeout=10).status_code == 200
        body = openai_body(stream=True, max_tokens=48, ignore_eos=True)
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, headers=auth,
                          timeout=60) as response:
            lines = response.iter_lines()
            for line in lines:
                if '"content": "' in line and '"role"' not in line:
                    srv.proc.send_signal(signal.SIGINT)  # mid-reply
                    break
            rest = sse_payloads(list(lines))
        assert srv.proc.wait(timeout=60) == 0
    finally:
        srv.stop()
    assert rest[-1] == "[DONE]"
    assert json.loads(rest[-2])["usage"]["completion_tokens"] == 48  # drained, not cut
    log = srv.log_text()
    assert "stopped: 1 replies served" in log
    assert KEY not in log and "Traceback" not in log


# -- the scheduler --------------------------------------------------------------------------

async def test_scheduler_admits_its_capacity_then_queues_in_order() -> None:
    scheduler = Scheduler(capacity=2, max_queue=2)
    first, second = scheduler.join(), scheduler.join()
    assert first.granted and second.granted
    third, fourth = scheduler.join(), scheduler.join()
    assert not third.granted and scheduler.position(fourth) == 2
    with pytest.raises(QueueFull):
        scheduler.join()
    positions = scheduler.wait(fourth, every_s=5)
    assert await anext(positions) == 2
    scheduler.leave(second)
    assert third.granted and scheduler.in_flight == 2
    assert await anext(positions) == 1  # it moved up without waiting out every_s
    scheduler.leave(fourth)  # left the queue before its turn
    assert scheduler.queued == 0
    scheduler.leave(first)
    scheduler.leave(first)  # twice: no slot given back twice
    assert scheduler.in_flight == 1


async def test_scheduler_stop_refuses_waiting_and_new_replies() -> None:
    scheduler = Scheduler(capacity=1, max_queue=4)
    running, waiting = scheduler.join(), scheduler.join()
    positions = scheduler.wait(waiting, every_s=5)
    assert await anext(positions) == 1
    scheduler.close()
    with pytest.raises(ServerClosing):
        await anext(positions)
    with pytest.raises(ServerClosing):
        scheduler.join()
    assert running.granted and scheduler.in_flight == 1
