"""The OpenAI-compatible backend against real servers on 127.0.0.1: llama-cpp-python's
own server on the bundled model, and a stdlib server that stalls. Nothing else is
contacted."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import jsonschema
import pytest
from pydantic import SecretStr

from engine.api import ChatMessage
from engine.backends.remote.engine import OpenAIEngine
from engine.backends.remote.errors import ServerAuthFailed, ServerHTTPError, ServerUnreachable
from engine.backends.remote.stats import parse_metrics, stats_from_metrics, stats_from_slots
from engine.config import EndpointConfig, KvchatConfig, SamplingConfig
from engine.events import Done, Error, Event, KVUsage, PromptEvaluated, TokenChunk, parse_event
from engine.routing.service import RouteService
from engine.session import ChatSession
from engine.store import Store
from engine.structured.spec import OutputSpec
from tests.conftest import chat_request, run_kvchat
from tests.openai_servers import LlamaCppServer, ScriptedServer, free_port

API_KEY = "kvchat-test-key-1f7c"
GREEDY = SamplingConfig(temperature=0.0, max_tokens=12, seed=0)
LONG = SamplingConfig(temperature=0.0, max_tokens=300, seed=0)
PERSON = {"type": "object", "properties": {"name": {"type": "string"},
                                           "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}


@pytest.fixture(scope="module")
def server(gemma_path: Path, tmp_path_factory: pytest.TempPathFactory,
           ) -> Iterator[LlamaCppServer]:
    srv = LlamaCppServer(gemma_path, tmp_path_factory.mktemp("srv") / "server.log",
                         api_key=API_KEY)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def endpoint(url: str, **kw: object) -> EndpointConfig:
    return EndpointConfig(base_url=url, **kw)  # type: ignore[arg-type]


@pytest.fixture
async def remote(server: LlamaCppServer) -> AsyncIterator[OpenAIEngine]:
    eng = OpenAIEngine(endpoint(server.base_url), api_key=SecretStr(API_KEY), sampling=GREEDY)
    await eng.start()
    yield eng
    await eng.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "kvchat.db") as st:
        yield st


async def collect(events: AsyncIterator[Event]) -> list[Event]:
    return [event async for event in events]


def user(text: str) -> list[ChatMessage]:
    return [ChatMessage(role="user", content=text)]


# -- what the server tells ------------------------------------------------------------

async def test_model_loaded_says_what_the_server_told(remote: OpenAIEngine,
                                                      server: LlamaCppServer) -> None:
    info = remote.info
    assert info is not None
    assert info.remote == "llama-cpp-python"
    assert info.backend == f"openai:127.0.0.1:{server.port}"
    assert info.name == "gemma-3-270m-q4_k_m.gguf"
    # llama-cpp-python's server says nothing of its context or weights: unknown, and
    # the context budgets use is labelled an assumption.
    assert info.n_ctx_source == "assumed"
    assert info.n_params is None and info.kv_bytes is None and info.n_layers is None
    assert remote.count_tokens("hello") is None


async def test_streaming_reply_through_the_session(remote: OpenAIEngine,
                                                   store: Store) -> None:
    session = ChatSession(remote, store)
    events = await collect(session.send("Say hello.", sampling=GREEDY))
    types = [e.type for e in events]
    assert types[0] == "turn_started" and types[-1] == "done"
    assert types.count("done") == 1 and "error" not in types
    prompt = next(e for e in events if isinstance(e, PromptEvaluated))
    # No usage in this server's stream: the prompt count is an offline estimate, and
    # the cache reuse the server never reports stays unknown.
    assert prompt.token_count != "exact" and prompt.reused_tokens is None
    done = events[-1]
    assert isinstance(done, Done)
    text = "".join(e.text for e in events if isinstance(e, TokenChunk))
    assert text and done.text == text
    assert done.finish_reason == "length" and done.completion_tokens == 12
    assert done.token_count == "estimate" and done.reused_tokens is None
    assert not any(isinstance(e, KVUsage) for e in events)  # nothing the server said
    reply = store.messages(events[0].conversation_id)[-1]  # type: ignore[union-attr]
    assert reply.status == "complete" and reply.content == text

    # A second turn sends the whole conversation again and streams as well.
    again = await collect(session.send("And goodbye.", events[0].conversation_id,  # type: ignore[union-attr]
                                       sampling=GREEDY))
    assert again[-1].type == "done"
    assert len(store.messages(events[0].conversation_id)) == 4  # type: ignore[union-attr]


async def test_cancel_closes_the_stream(remote: OpenAIEngine, server: LlamaCppServer) -> None:
    disconnects_before = server.log_text().count("Disconnected from client")
    events: list[Event] = []
    async for event in remote.chat(chat_request(user("Count from one to one hundred."), LONG)):
        events.append(event)
        if sum(isinstance(e, TokenChunk) for e in events) == 3:
            remote.cancel()
    done = events[-1]
    assert isinstance(done, Done) and done.finish_reason == "cancelled"
    assert done.text == "".join(e.text for e in events if isinstance(e, TokenChunk))
    assert done.completion_tokens < 300 and done.token_count == "estimate"
    # The server noticed the closed connection and stopped generating for nobody.
    deadline = time.monotonic() + 20
    while server.log_text().count("Disconnected from client") == disconnects_before:
        assert time.monotonic() < deadline, "the server never saw the stream close"
        await asyncio.sleep(0.2)
    follow = await collect(remote.chat(chat_request(user("Say hi."), GREEDY)))
    assert isinstance(follow[-1], Done) and follow[-1].finish_reason == "length"


async def test_leaving_the_iterator_cancels(remote: OpenAIEngine) -> None:
    seen = 0
    async for event in remote.chat(chat_request(user("Count from one to one hundred."), LONG)):
        seen += isinstance(event, TokenChunk)
        if seen == 2:
            break
    follow = await collect(remote.chat(chat_request(user("Say hi."), GREEDY)))
    assert isinstance(follow[-1], Done)


# -- failures ---------------------------------------------------------------------------

async def test_server_killed_mid_stream_keeps_the_partial_reply(
        gemma_path: Path, tmp_path: Path, store: Store) -> None:
    srv = LlamaCppServer(gemma_path, tmp_path / "doomed.log")
    try:
        srv.wait_ready()
        eng = OpenAIEngine(endpoint(srv.base_url), sampling=LONG)
        await eng.start()
        session = ChatSession(eng, store)
        events: list[Event] = []
        async for event in session.send("Count from one to one hundred.", sampling=LONG):
            events.append(event)
            if sum(isinstance(e, TokenChunk) for e in events) == 3:
                srv.kill()
        await eng.close()
    finally:
        srv.stop()
    final = events[-1]
    assert isinstance(final, Error), final
    assert final.code == "stream_cut" and "partial reply" in final.message
    assert sum(isinstance(e, Done | Error) for e in events) == 1
    partial = "".join(e.text for e in events if isinstance(e, TokenChunk))
    reply = store.messages(events[0].conversation_id)[-1]  # type: ignore[union-attr]
    assert reply.status == "error" and reply.content == partial and partial
    assert reply.stats == {"error": "stream_cut", "message": final.message}


async def test_refused_connection_is_one_line() -> None:
    port = free_port()  # nothing listens there
    eng = OpenAIEngine(endpoint(f"http://127.0.0.1:{port}/v1"))
    with pytest.raises(ServerUnreachable) as err:
        await eng.start()
    assert err.value.usage and "Connection refused" in err.value.message
    assert "\n" not in err.value.message
    await eng.close()


async def test_wrong_path_is_a_404_with_a_hint(server: LlamaCppServer) -> None:
    eng = OpenAIEngine(endpoint(f"http://127.0.0.1:{server.port}/v2"),
                       api_key=SecretStr(API_KEY))
    with pytest.raises(ServerHTTPError) as err:
        await eng.start()
    assert err.value.code == "server_not_found" and "/v1" in err.value.message
    await eng.close()


@pytest.mark.parametrize("key", [None, "wrong-key"])
async def test_401_is_a_clear_error_without_the_key(server: LlamaCppServer,
                                                    key: str | None) -> None:
    eng = OpenAIEngine(endpoint(server.base_url),
                       api_key=SecretStr(key) if key else None)
    with pytest.raises(ServerAuthFailed) as err:
        await eng.start()
    assert "HTTP 401" in err.value.message and err.value.usage
    assert "wrong-key" not in err.value.message and API_KEY not in err.value.message
    await eng.close()


async def test_slow_server_past_the_timeout(store: Store) -> None:
    with ScriptedServer(stall_s=5.0) as slow:
        eng = OpenAIEngine(endpoint(slow.base_url, timeout=1.0))
        info = await eng.start()
        assert info.remote == "openai-compatible"
        session = ChatSession(eng, store)
        events = await collect(session.send("Hi", sampling=GREEDY))
        await eng.close()
    final = events[-1]
    assert isinstance(final, Error) and final.code == "server_timeout"
    assert "1 s" in final.message and "partial reply" in final.message
    # A server that finished after its stall would have ended with Done, not this.
    reply = store.messages(events[0].conversation_id)[-1]  # type: ignore[union-attr]
    assert reply.status == "error" and reply.content == "Hello"


# -- routing and structured output -------------------------------------------------------

async def test_routing_end_to_end(remote: OpenAIEngine, store: Store) -> None:
    routes = RouteService.from_config(KvchatConfig())
    session = ChatSession(remote, store, routes=routes)
    events = await collect(session.send(
        "Write a Python function that reverses a string.", sampling=GREEDY,
        pinned=("max_tokens", "temperature")))
    route = next(e for e in events if e.type == "route")
    assert route.route == "code"  # type: ignore[union-attr]
    assert route.n_ctx == remote.info.n_ctx  # type: ignore[union-attr]
    # No local tokenizer for a server's model: the budget count is labelled.
    assert route.token_count != "exact"  # type: ignore[union-attr]
    assert events[-1].type == "done"
    conversation = events[0].conversation_id  # type: ignore[union-attr]
    assert store.messages(conversation)[0].stats["route"] == "code"  # type: ignore[index]


async def test_json_schema_constraint_gives_valid_json(remote: OpenAIEngine) -> None:
    spec = OutputSpec(format="json", schema=PERSON)
    events = await collect(remote.chat(chat_request(user("Describe a person."),
                                                    SamplingConfig(temperature=0.0, max_tokens=80),
                                                    constraint=spec)))
    done = events[-1]
    assert isinstance(done, Done), done
    jsonschema.validate(json.loads(done.text), PERSON)


async def test_code_constraint_uses_the_grammar_field(remote: OpenAIEngine) -> None:
    spec = OutputSpec(format="code", language="python")
    events = await collect(remote.chat(chat_request(user("Add two numbers in Python."),
                                                    SamplingConfig(temperature=0.0, max_tokens=40),
                                                    constraint=spec)))
    done = events[-1]
    assert isinstance(done, Done), done
    assert done.text.startswith("```python\n")


async def test_constraint_a_server_cannot_enforce_is_refused_before_sending() -> None:
    with ScriptedServer(stall_s=0.0) as plain:
        eng = OpenAIEngine(endpoint(plain.base_url))
        await eng.start()
        events = await collect(eng.chat(chat_request(user("Code please."), GREEDY,
                                                     constraint=OutputSpec(format="code"))))
        await eng.close()
        assert plain.chat_requests == 0
    assert len(events) == 1 and isinstance(events[0], Error)
    assert events[0].code == "constraint_unsupported"
    assert "openai-compatible" in events[0].message


async def test_retry_ladder_ends_schema_valid(remote: OpenAIEngine, store: Store) -> None:
    session = ChatSession(remote, store)
    events = await collect(session.send(
        "Describe a person.", sampling=SamplingConfig(temperature=0.0, max_tokens=80),
        output=OutputSpec(format="json", schema=PERSON)))
    done = events[-1]
    assert isinstance(done, Done), done
    assert done.output_ok is True
    jsonschema.validate(json.loads(done.text), PERSON)
    checks = [e for e in events if e.type == "output_check"]
    assert checks and checks[-1].ok  # type: ignore[union-attr]


# -- the command line ----------------------------------------------------------------------

def test_ask_with_openai_backend(server: LlamaCppServer, kvchat_home: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVCHAT_TEST_KEY", API_KEY)
    proc = run_kvchat("ask", "--temp", "0", "--max-tokens", "8", "--events", "jsonl",
                      "--base-url", server.base_url, "--api-key-env", "KVCHAT_TEST_KEY",
                      "Say hello.", home=kvchat_home)
    assert proc.returncode == 0, proc.stderr
    events = [parse_event(line) for line in proc.stdout.splitlines()]
    assert events[0].type == "model_loaded"
    assert events[0].backend == f"openai:127.0.0.1:{server.port}"  # type: ignore[union-attr]
    assert events[-1].type == "done" and any(e.type == "token" for e in events)
    # The key travels in a header only: never in the store or anything kvchat wrote.
    for path in kvchat_home.rglob("*"):
        if path.is_file():
            assert API_KEY.encode() not in path.read_bytes(), path


def test_named_endpoint_from_the_config(server: LlamaCppServer, kvchat_home: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVCHAT_TEST_KEY", API_KEY)
    kvchat_home.mkdir(parents=True, exist_ok=True)
    (kvchat_home / "config.toml").write_text(
        "[backend]\nkind = \"openai\"\nendpoint = \"here\"\n"
        f"[backend.endpoints.here]\nbase_url = \"{server.base_url}\"\n"
        "api_key_env = \"KVCHAT_TEST_KEY\"\ntimeout = 30\n"
        "[backend.endpoints.elsewhere]\nbase_url = \"http://127.0.0.1:9/v1\"\n")
    proc = run_kvchat("ask", "--temp", "0", "--max-tokens", "6", "Say hi.", home=kvchat_home)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()
    # The other endpoint: nothing listens on port 9 of loopback.
    refused = run_kvchat("ask", "--endpoint", "elsewhere", "Hi", home=kvchat_home)
    assert refused.returncode == 2 and "Connection refused" in refused.stderr
    assert "Traceback" not in refused.stderr
    missing = run_kvchat("ask", "--api-key-env", "KVCHAT_UNSET_VAR", "Hi", home=kvchat_home)
    assert missing.returncode == 2 and "KVCHAT_UNSET_VAR" in missing.stderr


# -- what llama-server and vLLM export, read by the stats parser ------------------------------

LLAMA_SERVER_METRICS = """\
# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 1000
# HELP llamacpp:kv_cache_usage_ratio KV-cache usage. 1 means 100 percent usage.
# TYPE llamacpp:kv_cache_usage_ratio gauge
llamacpp:kv_cache_usage_ratio 0.63
# HELP llamacpp:kv_cache_tokens KV-cache tokens.
# TYPE llamacpp:kv_cache_tokens gauge
llamacpp:kv_cache_tokens 1290
# HELP llamacpp:requests_processing Number of requests processing.
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 1
# HELP llamacpp:requests_deferred Number of requests deferred.
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 2
"""

VLLM_METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 1.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
# HELP vllm:spec_decode_num_draft_tokens_total Number of draft tokens.
# TYPE vllm:spec_decode_num_draft_tokens_total counter
vllm:spec_decode_num_draft_tokens_total{engine="0",model_name="m"} 120.0
"""


def test_metrics_parser_reads_llama_server_and_vllm() -> None:
    llama = stats_from_metrics(parse_metrics(LLAMA_SERVER_METRICS))
    assert llama["kv_usage"] == pytest.approx(0.63) and llama["kv_tokens"] == 1290
    assert llama["requests_running"] == 1 and llama["requests_waiting"] == 2
    assert llama["drafted_total"] is None  # not exported: unknown, not zero
    vllm = stats_from_metrics(parse_metrics(VLLM_METRICS))
    assert vllm["kv_usage"] == pytest.approx(0.25)
    assert vllm["requests_running"] == 4  # summed over the engines' labels
    assert vllm["drafted_total"] == 120 and vllm["requests_waiting"] is None
    slots = stats_from_slots([{"id": 0, "n_ctx": 4096, "is_processing": False},
                              {"id": 1, "n_ctx": 4096, "n_past": 812}])
    assert slots == {"n_ctx": 4096, "slot_tokens": 812}


async def test_the_app_chats_through_the_server(server: LlamaCppServer,
                                                kvchat_home: Path) -> None:
    # The app as `kvchat --base-url ...` builds it: a reply streams through the same
    # message chain, the memory pane says the split is unknown, the stats line says
    # which counts are estimates, and nothing shows "None".
    from tests.test_tui import wait_for
    from tui.app import KvchatApp
    from tui.messages import ModelReady, ReplyFinished
    from tui.widgets.chat_pane import ReplyMessage
    from tui.widgets.memory_pane import MemoryPane

    config = KvchatConfig(sampling=SamplingConfig(temperature=0.0, max_tokens=16))
    engine = OpenAIEngine(endpoint(server.base_url), api_key=SecretStr(API_KEY),
                          sampling=config.sampling)
    app = KvchatApp(config, engine, Store(kvchat_home / "kvchat.db"), route="chat",
                    pinned=("max_tokens", "temperature"),
                    prefs_file=kvchat_home / "ui-prefs.json")
    seen: list = []
    async with app.run_test(size=(160, 48), message_hook=seen.append) as pilot:
        await wait_for(seen, ModelReady, pilot)
        await pilot.click("#prompt")
        await pilot.press(*"Name a colour.")
        await pilot.press("enter")
        finished = await wait_for(seen, ReplyFinished, pilot)
        await pilot.pause()
        assert isinstance(finished, ReplyFinished) and finished.done.completion_tokens > 0
        reply = app.query_one(ReplyMessage)
        assert reply.text == finished.done.text
        stats = str(reply.query_one(".reply-stats").render())
        assert "tokens" in stats and "None" not in stats
        layers = str(app.query_one(MemoryPane).query_one("#mem-layers").render())
        assert "layers unknown" in layers
