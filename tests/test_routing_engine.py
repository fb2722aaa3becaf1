"""Routing against the real model: the route's reserve reaches the KV manager, the
cache is reused across routes, overrides work, and the model fallback answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.backends.local import LocalEngine
from engine.config import KvchatConfig, RouterConfig, SamplingConfig
from engine.events import KVUsage, PromptEvaluated, Retry, RouteDecision
from engine.routing.service import RouteError, RouteService
from engine.routing.templates import load_templates
from engine.session import ChatSession
from engine.store import Store
from tests.conftest import run_kvchat

SAMPLING = SamplingConfig(temperature=0.0, max_tokens=4, seed=0)
SHORT = {"max_tokens"}


async def _turn(session: ChatSession, text: str, conversation: int | None,
                max_tokens: int = 4, **kwargs) -> tuple[list, int]:
    events = []
    sampling = SAMPLING.model_copy(update={"max_tokens": max_tokens})
    async for event in session.send(text, conversation, sampling, pinned=SHORT, **kwargs):
        events.append(event)
    return events, events[0].conversation_id


def _first(events: list, kind: type):
    return next(e for e in events if isinstance(e, kind))


async def test_route_reserve_reaches_the_kv_manager(engine: LocalEngine,
                                                    tmp_path: Path) -> None:
    # Small reserves (user templates replacing the bundled ones) keep the replies short:
    # the reserve is capped at max_tokens, so max_tokens must exceed it to show it.
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "qa.toml").write_text('name = "qa"\ndescription = "q"\n'
                                    '[budget]\nreply_reserve = 20\n')
    (folder / "code.toml").write_text('name = "code"\ndescription = "c"\n'
                                      '[budget]\nreply_reserve = 0.04\n')  # 40 of 1024
    with Store(tmp_path / "kvchat.db") as store:
        session = ChatSession(engine, store, "Be brief.",
                              routes=RouteService(load_templates(folder)))
        events, _ = await _turn(session, "What is the capital of France?", None,
                                max_tokens=48)
        route, kv = _first(events, RouteDecision), _first(events, KVUsage)
        assert (route.route, route.kv_reserved, kv.reserved_cells) == ("qa", 20, 20)
        events, _ = await _turn(session, "Write a Python function that reverses a list.",
                                None, max_tokens=48)
        route, kv = _first(events, RouteDecision), _first(events, KVUsage)
        assert (route.route, route.kv_reserved, kv.reserved_cells) == ("code", 40, 40)


async def test_cache_is_reused_when_the_route_changes(engine: LocalEngine,
                                                      tmp_path: Path) -> None:
    with Store(tmp_path / "kvchat.db") as store:
        session = ChatSession(engine, store, "Be brief.",
                              routes=RouteService(load_templates()))
        events, cid = await _turn(session, "Write a Python function that adds numbers.",
                                  None)
        assert _first(events, RouteDecision).route == "code"
        first = _first(events, PromptEvaluated)
        retries = [e for e in events if isinstance(e, Retry)]
        events, _ = await _turn(session, "What is the capital of Italy?", cid)
        route = _first(events, RouteDecision)
        assert route.route == "qa"
        second = _first(events, PromptEvaluated)
        # Everything before this turn came from the cache: the route's instructions
        # travel with the user turn, so the earlier prefix never changes.
        assert second.reused_tokens >= first.prompt_tokens
        # Only the new turn (instructions, message, turn markers) was evaluated.
        assert second.evaluated_tokens <= route.prompt_tokens + 16
        rows = store.messages(cid)
        stats = rows[0].stats or {}
        assert stats["route"] == "code"
        assert stats["instructions"] == session.routes.templates.get("code").instructions
        # A retried code reply: the turn is kept as its last attempt's prompt was, so
        # the cache (which holds that attempt) is reused by the next turn.
        if retries:
            assert stats["format_instructions"] in retries[-1].prompt_change
        else:
            assert "format_instructions" not in stats
        assert rows[0].content == "Write a Python function that adds numbers."
        assert rows[1].stats["route"] == "code"


async def test_override_for_one_message(engine: LocalEngine, tmp_path: Path) -> None:
    with Store(tmp_path / "kvchat.db") as store:
        session = ChatSession(engine, store, "", routes=RouteService(load_templates()))
        events, cid = await _turn(session, "hello there", None, route="summarize")
        route = _first(events, RouteDecision)
        assert (route.route, route.source) == ("summarize", "override")
        events, _ = await _turn(session, "hello again", cid)
        assert _first(events, RouteDecision).source == "signals"
        with pytest.raises(RouteError):
            async for _ in session.send("hi", cid, route="nonsense"):
                pass
        assert len(store.messages(cid)) == 4  # the refused message was not stored


async def test_model_fallback_answers_in_a_side_context(engine: LocalEngine,
                                                        tmp_path: Path) -> None:
    routes = RouteService(load_templates(), RouterConfig(model_fallback=True,
                                                         min_confidence=1.0))
    with Store(tmp_path / "kvchat.db") as store:
        session = ChatSession(engine, store, "", routes=routes)
        events, cid = await _turn(session, "Tell me something.", None)
        route = _first(events, RouteDecision)
        assert route.source == "model"
        assert route.route in routes.templates.names
        assert route.fallback_ms is not None and route.fallback_ms > 0
        assert "the model answered" in route.reason
        first = _first(events, PromptEvaluated)
        events, _ = await _turn(session, "And another thing.", cid)
        # The side context left the conversation's cache alone.
        assert _first(events, PromptEvaluated).reused_tokens >= first.prompt_tokens


def test_route_command_needs_no_model(kvchat_home: Path) -> None:
    proc = run_kvchat("route", "--json", "--model", "/nonexistent.gguf",
                      "Summarize this:\n" + "Sales rose in May. " * 40, home=kvchat_home)
    assert proc.returncode == 0, proc.stderr
    event = json.loads(proc.stdout)
    assert event["type"] == "route"
    assert event["route"] == "summarize"
    assert event["token_count"] in {"estimate", "tiktoken:cl100k_base"}
    assert event["kv_reserved"] > 0
    text = run_kvchat("route", "def add(a, b): return a + b", home=kvchat_home)
    assert text.returncode == 0
    assert text.stdout.startswith("route       code")
    assert "reason" in text.stdout and "budget" in text.stdout
    bad = run_kvchat("route", "--route", "sql", "x", home=kvchat_home)
    assert bad.returncode == 2
    assert bad.stderr.strip() == ("kvchat: error: unknown route 'sql' (choose from chat, "
                                  "code, qa, summarize)")


def test_broken_user_template_is_a_warning_not_a_failure(kvchat_home: Path) -> None:
    folder = kvchat_home / "templates"
    folder.mkdir(parents=True)
    (folder / "qa.toml").write_text('name = "qa"\ndescription = "x"\ntemperature = 3\n')
    proc = run_kvchat("route", "What is a GGUF file?", home=kvchat_home)
    assert proc.returncode == 0
    assert f"template {folder / 'qa.toml'}: temperature: unknown key" in proc.stderr
    assert "route       qa" in proc.stdout
    assert "(bundled)" in proc.stdout


def test_ask_route_override_in_events(kvchat_home: Path) -> None:
    proc = run_kvchat("ask", "--events", "jsonl", "--max-tokens", "3", "--route", "code",
                      "hello", home=kvchat_home)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    route = next(e for e in events if e["type"] == "route")
    assert (route["route"], route["source"], route["max_tokens"]) == ("code", "override", 3)
    kinds = [e["type"] for e in events]
    assert kinds.index("turn_started") < kinds.index("route") < kinds.index("prompt")


def test_routing_can_be_switched_off() -> None:
    config = KvchatConfig.model_validate({"router": {"enabled": False}})
    assert not config.router.enabled
