"""Structured output on the real model: grammar-constrained decoding, the retry ladder
end to end, attempts in a real SQLite store, and the ``retries`` CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.api import ChatMessage
from engine.backends.local import LocalEngine
from engine.config import (
    KVCacheConfig,
    KvchatConfig,
    ModelConfig,
    SamplingConfig,
    SpeculativeConfig,
)
from engine.events import (
    Done,
    Error,
    Event,
    Eviction,
    OutputCheck,
    Retry,
    RouteDecision,
    SpecStats,
)
from engine.routing.service import RouteService
from engine.routing.templates import load_templates
from engine.session import ChatSession
from engine.store import Store
from engine.structured.checks import check_output
from engine.structured.spec import OutputSpec
from tests.conftest import chat_request, run_kvchat

BOOK = {"type": "object",
        "properties": {"title": {"type": "string", "maxLength": 60},
                       "year": {"type": "integer"}},
        "required": ["title", "year"], "additionalProperties": False}
STEPS = {"type": "object",
         "properties": {"steps": {"type": "array", "minItems": 12, "maxItems": 12,
                                  "items": {"type": "string", "maxLength": 40}}},
         "required": ["steps"]}


async def collect(stream) -> list[Event]:  # type: ignore[no-untyped-def]
    return [event async for event in stream]


@pytest.mark.parametrize("spec", [
    OutputSpec(format="json", schema=BOOK),
    OutputSpec(format="json"),
    OutputSpec(format="list"),
], ids=["schema", "json", "list"])
async def test_grammar_constrained_reply_passes_its_check(engine: LocalEngine,
                                                          spec: OutputSpec) -> None:
    sampling = SamplingConfig(temperature=0.0, max_tokens=96)
    events = await collect(engine.chat(chat_request(
        [ChatMessage(role="user", content="Name a famous novel and its year.")], sampling,
        constraint=spec)))
    done = events[-1]
    assert isinstance(done, Done), done
    if spec.format == "json":  # a list may run to max_tokens, still a list
        assert done.finish_reason == "stop"
    result = check_output(done.text, spec)
    assert result.ok, (done.text, result.errors)


async def test_unconstrained_reply_to_the_same_prompt_is_not_json(engine: LocalEngine) -> None:
    # The base model left alone does not answer in JSON: the grammar is what does it.
    events = await collect(engine.chat(chat_request(
        [ChatMessage(role="user", content="Name a famous novel and its year.")],
        SamplingConfig(temperature=0.0, max_tokens=48))))
    done = events[-1]
    assert isinstance(done, Done)
    assert not check_output(done.text, OutputSpec(format="json", schema=BOOK)).ok


async def test_schema_grammar_holds_across_evictions_with_speculation_on(
        gemma_path: Path) -> None:
    # Gemma: a base model that keeps listing steps, so the window has to evict.
    engine = LocalEngine(ModelConfig(path=gemma_path, n_ctx=256), SamplingConfig(temperature=0.0),
                         KVCacheConfig(), SpeculativeConfig(mode="prompt-lookup"))
    await engine.start()
    try:
        spec = OutputSpec(format="json", schema=STEPS)
        events = await collect(engine.chat(chat_request(
            [ChatMessage(role="user", content="List twelve steps to bake bread. " * 6)],
            # Room for twelve 40-character steps even in one-character tokens.
            SamplingConfig(temperature=0.0, max_tokens=800), reserve=0, constraint=spec)))
    finally:
        await engine.close()
    done = events[-1]
    assert isinstance(done, Done), done
    evictions = [e for e in events if isinstance(e, Eviction)]
    assert evictions and all(e.reason == "generation" for e in evictions)
    assert any(isinstance(e, SpecStats) and e.drafted > 0 for e in events)
    assert done.drafted_tokens > 0
    result = check_output(done.text, spec)
    assert result.ok, (done.text, result.errors)
    assert len(result.value["steps"]) == 12


def session_for(engine: LocalEngine, tmp_path: Path) -> tuple[ChatSession, Store]:
    store = Store(tmp_path / "kvchat.db")
    return ChatSession(engine, store, "", routes=RouteService.from_config(KvchatConfig())), store


async def test_ladder_end_to_end_stores_every_attempt(engine: LocalEngine,
                                                      tmp_path: Path) -> None:
    session, store = session_for(engine, tmp_path)
    spec = OutputSpec(format="json", schema=BOOK)
    events = await collect(session.send("Name a famous novel and the year it came out.",
                                        sampling=SamplingConfig(temperature=0.0,
                                                                max_tokens=64),
                                        output=spec))
    checks = [e for e in events if isinstance(e, OutputCheck)]
    retries = [e for e in events if isinstance(e, Retry)]
    done = events[-1]
    assert isinstance(done, Done)
    assert sum(isinstance(e, Done) for e in events) == 1  # attempts' own Done are held back
    # The ladder ends valid: the grammar step cannot produce anything else.
    assert done.output_ok is True
    assert check_output(done.text, spec).ok
    assert done.attempts == len(checks) == len(retries) + 1
    assert [c.attempt for c in checks] == list(range(1, done.attempts + 1))
    assert [c.final for c in checks] == [False] * (len(checks) - 1) + [True]
    assert [r.attempt for r in retries] == list(range(2, done.attempts + 1))
    for retry, before in zip(retries, checks, strict=False):
        assert retry.reason == before.errors[0]  # each retry names the error that caused it
    # Every attempt is in the store, in order, with its error and strategy.
    reply_id = events[0].reply_message_id  # type: ignore[union-attr]
    stored = store.attempts(reply_id)
    assert [(a.number, a.strategy, a.ok) for a in stored] == \
        [(c.attempt, c.strategy, c.ok) for c in checks]
    assert stored[-1].content == done.text or stored[-1].strategy == "repair"
    if done.attempts > 1:
        listed = store.retried_replies()
        assert [r.message_id for r in listed] == [reply_id]
        assert listed[0].ok and listed[0].attempts == done.attempts
    reply = store.messages(events[0].conversation_id)[-1]  # type: ignore[union-attr]
    assert reply.content == done.text
    assert reply.stats is not None and reply.stats["attempts"] == done.attempts


async def test_a_schema_without_a_grammar_fails_honestly(engine: LocalEngine,
                                                         tmp_path: Path) -> None:
    # {"not": {}} matches nothing, and the grammar converter cannot express it: every
    # attempt fails and the grammar step says it was skipped, nothing is passed off.
    session, store = session_for(engine, tmp_path)
    spec = OutputSpec(format="json", schema={"not": {}})
    events = await collect(session.send("Give me any JSON.", output=spec,
                                        sampling=SamplingConfig(temperature=0.0,
                                                                max_tokens=32)))
    done = events[-1]
    assert isinstance(done, Done) and done.output_ok is False
    assert not any(isinstance(e, Error) for e in events)
    last = [e for e in events if isinstance(e, OutputCheck)][-1]
    assert last.final and last.strategy == "grammar" and "skipped" in last.errors[0]
    reply_id = events[0].reply_message_id  # type: ignore[union-attr]
    assert store.retried_replies()[0].message_id == reply_id
    assert not store.retried_replies()[0].ok


def test_cli_ask_with_schema_then_review_with_retries(tmp_path: Path,
                                                      kvchat_home: Path) -> None:
    schema = tmp_path / "book.json"
    schema.write_text(json.dumps(BOOK))
    ask = run_kvchat("ask", "--temp", "0", "--max-tokens", "64", "--ctx", "1024",
                     "--schema", str(schema), "Name a famous novel and its year.",
                     home=kvchat_home, timeout=300)
    assert ask.returncode == 0, ask.stderr
    value = json.loads(ask.stdout)  # stdout holds only the final, valid JSON
    assert set(value) == {"title", "year"}
    listed = run_kvchat("retries", "--json", home=kvchat_home)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    if "attempt" in ask.stderr:  # the model needed retries: they are listed
        assert rows and rows[0]["ok"] is True and rows[0]["attempts"] >= 2
        shown = run_kvchat("retries", "show", str(rows[0]["message_id"]), home=kvchat_home)
        assert shown.returncode == 0
        assert "attempt 1: as generated" in shown.stdout
        assert f"attempt {rows[0]['attempts']}:" in shown.stdout
        assert "changes from attempt 1" in shown.stdout
    else:
        assert rows == []


@pytest.mark.parametrize(("content", "args", "message"), [
    (None, [], "schema file not found"),
    ("{not json", [], "not valid JSON"),
    ('{"type": "banana"}', [], "invalid JSON Schema"),
    ('{"$ref": "https://example.com/s.json"}', [], "outside the schema"),
    ('{"type": "object"}', ["--format", "code"], "--schema needs --format json"),
])
def test_cli_bad_schema_is_a_clear_usage_error(tmp_path: Path, kvchat_home: Path,
                                               content: str | None, args: list[str],
                                               message: str) -> None:
    path = tmp_path / "schema.json"
    if content is not None:
        path.write_text(content)
    proc = run_kvchat("ask", "--schema", str(path), *args, "hi", home=kvchat_home)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_retries_show_unknown_id(kvchat_home: Path) -> None:
    proc = run_kvchat("retries", "show", "99", home=kvchat_home)
    assert proc.returncode == 2 and "no checked attempts" in proc.stderr


async def test_a_user_template_with_a_schema_routes_and_validates(
        engine: LocalEngine, tmp_path: Path) -> None:
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "extract.toml").write_text('''
name = "extract"
description = "Pull a book's title and year out of a message"
instructions = "Answer with JSON only."
output = "json"
keywords = ["extract the book"]
schema = { type = "object", required = ["title", "year"], additionalProperties = false, \
properties = { title = { type = "string", maxLength = 60 }, year = { type = "integer" } } }

[retry]
max_attempts = 1
grammar_fallback = true
''')
    templates = load_templates(folder)
    assert not templates.problems, templates.problems
    store = Store(tmp_path / "kvchat.db")
    session = ChatSession(engine, store, "", routes=RouteService(templates))
    events = await collect(session.send("Extract the book: Dune came out in 1965.",
                                        sampling=SamplingConfig(temperature=0.0,
                                                                max_tokens=48)))
    route = next(e for e in events if isinstance(e, RouteDecision))
    assert route.route == "extract" and route.output == "json"
    done = events[-1]
    assert isinstance(done, Done) and done.output_ok is True
    value = check_output(done.text, OutputSpec(format="json",
                                               schema=BOOK)).value
    assert isinstance(value["year"], int)


def test_a_template_with_a_broken_schema_is_skipped_with_a_reason(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text('name = "bad"\ndescription = "x"\noutput = "json"\n'
                                       'schema = { type = "banana" }\n')
    templates = load_templates(tmp_path)
    assert "bad" not in templates.templates
    assert any("invalid JSON Schema" in p for p in templates.problems)
