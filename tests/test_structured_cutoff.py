"""A structured reply cut off by its token limit is never passed off as fine: the checks,
the repair, the grammar step's budget, the stored attempts and the review, on the real
models where a model is involved."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from textual.app import App

from engine.api import ChatMessage
from engine.backends.local import LocalEngine
from engine.config import KvchatConfig, ModelConfig, SamplingConfig
from engine.events import Done, Event, OutputCheck, Retry
from engine.routing.service import RouteService
from engine.session import ChatSession
from engine.store import MIGRATIONS, Store
from engine.structured.budget import END, JsonBudget, ListBudget
from engine.structured.checks import check_json, check_output, find_json, json_end
from engine.structured.ladder import repair
from engine.structured.spec import OutputSpec
from tests.conftest import chat_request, run_kvchat
from tui.screens.retry_screen import AttemptView, RetryScreen

COUNTRIES = {"type": "object", "required": ["countries"],
             "properties": {"countries": {"type": "array", "items": {
                 "type": "object", "required": ["name", "capital", "population"],
                 "properties": {"name": {"type": "string"}, "capital": {"type": "string"},
                                "population": {"type": "integer"}}}}}}
PROMPT = "List three countries with their capital and population as JSON"
# What a reply cut off at 40 tokens looks like: prose, then an outer object that never
# closes, whose first inner object is complete.
CUT_REPLY = ('Here are three countries:\n{"countries": [{"name": "France", "capital": '
             '"Paris", "population": 67000000},')
JSON = OutputSpec(format="json")


async def collect(stream) -> list[Event]:  # type: ignore[no-untyped-def]
    return [event async for event in stream]


# -- the checks and the repair, on text marked as cut off ------------------------------

@pytest.mark.parametrize(("text", "spec"), [
    ('{"countries": [{"name": "France"}]}', JSON),  # complete-looking JSON
    (CUT_REPLY, JSON),
    ('{"name": "Norway", "population": 6', OutputSpec(format="json", schema=COUNTRIES)),
    ("- Paris\n- Rome\n- Ber", OutputSpec(format="list")),
    ("```python\nx = 1\n```\n", OutputSpec(format="code")),
], ids=["complete", "inner-object", "cut-number", "list", "code"])
def test_a_reply_marked_cut_off_never_passes(text: str, spec: OutputSpec) -> None:
    result = check_output(text, spec, cut_off_at=40)
    assert not result.ok and result.truncated and result.value is None
    assert result.errors[0] == ("cut off at 40 tokens: the reply reached its token limit "
                                "before it ended")
    assert check_output(text, spec, cut_off_at=7, cut_by="the end of the context"
                        ).errors[0].endswith("reached the end of the context before it ended")


def test_the_inner_object_of_a_cut_off_reply_is_not_the_answer() -> None:
    result = check_json(CUT_REPLY)
    assert not result.ok and result.value is None
    assert result.found == "no valid JSON"
    assert result.errors[0].startswith("the JSON is cut off")
    # A string that never closes is reported at its start, and is a cut all the same.
    assert not check_json('["{}", "{').ok
    assert not find_json('{"steps": ["mix {flour}", "bake').found


def test_the_inner_value_of_malformed_json_is_not_taken() -> None:
    assert not check_json('{"a": [1, 2,, {"b": 1}]} and that is all').ok
    # Brackets in prose before the value are still skipped one by one.
    assert find_json('See [note] and {this}: {"b": 1}').value == {"b": 1}


def test_repair_never_completes_a_cut_off_structure() -> None:
    assert repair('{"name": "Norway", "population": 6', JSON) is None
    assert repair('{"items": [1, 2, 3', JSON) is None
    assert repair(CUT_REPLY, JSON) is None
    assert repair('["a", "b', JSON) is None
    fixed = repair("Here: {'name': 'Ann', 'age': 31,} and then some prose", JSON)
    assert fixed is not None and json.loads(fixed) == {"name": "Ann", "age": 31}


def test_json_end_reads_strings_and_escapes() -> None:
    text = r'x {"a": "}\"]", "b": ["\\", {}]} tail'
    assert text[json_end(text, 2) or 0:] == " tail"
    assert json_end('{"a": [1, 2}', 0) is None  # one bracket short
    assert json_end('{"a": "}', 0) is None


# -- the budget that ends a constrained reply within its limit --------------------------

ITEM = [b' {"', b"name", b'":', b' "', b"Peru", b'",', b' "', b"pop", b'":', b" 3", b"},"]


def feed(budget: JsonBudget, pieces: list[bytes]) -> list[bytes | None]:
    asked = []
    for piece in pieces:
        asked.append(budget.instead_of(piece))
        budget.accept(piece)
    return asked


def test_json_budget_lets_items_through_while_another_fits() -> None:
    budget = JsonBudget(max_tokens=200)
    assert feed(budget, [b'{"', b"countries", b'":', b" ["] + ITEM * 3) == [None] * 37


def test_json_budget_closes_the_array_instead_of_starting_an_item_that_would_not_fit(
        ) -> None:
    budget = JsonBudget(max_tokens=30)
    feed(budget, [b'{"', b"countries", b'":', b" [", *ITEM[:-1]])
    # 14 tokens used, an item takes 11: another would end past the limit.
    assert budget.instead_of(b"},") == b"}]"
    assert budget.instead_of(b"}") is None
    budget.accept(b"}")
    assert budget.instead_of(b",") == b"]"
    budget.accept(b"]")
    budget.accept(b"}")
    assert budget.complete and budget.instead_of(b"\n") == END


def test_json_budget_never_cuts_a_value_short() -> None:
    budget = JsonBudget(max_tokens=12)
    feed(budget, [b'{"', b"a", b'":', b" [", b'"x', b'",', b' "'])
    # Inside a string a comma is text, not a boundary: the string goes on.
    assert budget.instead_of(b"one, two") is None


def test_list_budget_ends_before_an_item_that_would_not_fit() -> None:
    budget = ListBudget(max_tokens=9)
    for piece in (b"- ", b"Paris", b"\n", b"- ", b"Rome", b"\n"):
        assert budget.instead_of(piece) is None
        budget.accept(piece)
    assert budget.instead_of(b"- ") == END
    assert ListBudget(max_tokens=50).instead_of(b"- ") is None  # no item yet: nothing known


# -- the store and the review ------------------------------------------------------------

def store_cut_off_reply(store: Store) -> int:
    cid = store.create_conversation(PROMPT, "test")
    store.add_message(cid, "user", PROMPT)
    mid = store.add_message(cid, "assistant", CUT_REPLY, stats={"attempts": 1,
                                                               "output_ok": False})
    store.add_attempt(mid, 1, "as_generated", "json", CUT_REPLY, False, found="no valid JSON",
                      errors=["cut off at 40 tokens: the reply reached its token limit"],
                      completion_tokens=40, truncated=True)
    return mid


def test_a_store_from_before_the_truncated_column_opens_and_reads(tmp_path: Path) -> None:
    path = tmp_path / "kvchat.db"
    raw = sqlite3.connect(path)
    for script in MIGRATIONS[:2]:
        raw.executescript(script)
    raw.execute("PRAGMA user_version = 2")
    raw.execute("INSERT INTO conversations VALUES (1, 't', NULL, 0, 0)")
    raw.execute("INSERT INTO messages VALUES (1, 1, 'assistant', 'x', 'complete', 0, 0, NULL)")
    raw.execute("INSERT INTO attempts (message_id, number, strategy, format, content, ok,"
                " created_at) VALUES (1, 1, 'as_generated', 'json', 'x', 0, 0)")
    raw.commit()
    raw.close()
    with Store(path) as store:
        old = store.attempts(1)[0]
        assert not old.truncated and old.cut_off_note == ""
        mid = store_cut_off_reply(store)
        row = store.attempts(mid)[0]
        assert row.truncated and row.cut_off_note == "cut off at 40 tokens"


class ReviewApp(App[None]):
    def __init__(self, store: Store) -> None:
        super().__init__()
        self.store = store

    def on_mount(self) -> None:
        self.push_screen(RetryScreen(self.store))


async def test_the_retry_screen_says_where_an_attempt_was_cut_off(tmp_path: Path) -> None:
    with Store(tmp_path / "kvchat.db") as store:
        store_cut_off_reply(store)
        app = ReviewApp(store)
        async with app.run_test(size=(160, 48)) as pilot:
            await pilot.pause(0.3)
            views = list(app.screen.query(AttemptView))
            assert len(views) == 1
            head = str(views[0].query_one(".attempt-head").render())
            assert head.startswith("attempt 1 · as generated · cut off at 40 tokens · 40 tokens")


# -- real generation at small limits ------------------------------------------------------

@pytest.fixture(params=["smollm2", "gemma3-270m"])
async def any_engine(request: pytest.FixtureRequest, gemma_path: Path,
                     default_path: Path) -> AsyncIterator[LocalEngine]:
    path = default_path if request.param == "smollm2" else gemma_path
    eng = LocalEngine(ModelConfig(path=path, n_ctx=1024), SamplingConfig(temperature=0.0))
    await eng.start()
    yield eng
    await eng.close()


async def test_the_grammar_step_ends_within_its_limit_with_valid_json(
        any_engine: LocalEngine) -> None:
    # Both models, left to the grammar alone, repeat array items up to the limit.
    spec = OutputSpec(format="json", schema=COUNTRIES)
    events = await collect(any_engine.chat(chat_request(
        [ChatMessage(role="user", content=PROMPT)],
        SamplingConfig(temperature=0.0, max_tokens=72), constraint=spec)))
    done = events[-1]
    assert isinstance(done, Done), done
    assert done.finish_reason == "stop" and done.completion_tokens < 72, done.text
    result = check_output(done.text, spec)
    assert result.ok, (done.text, result.errors)
    assert result.value["countries"], done.text


async def test_a_constrained_list_ends_within_its_limit(engine: LocalEngine) -> None:
    # The default model only: Gemma writes one endless item ("1. 2. 3. ..."), which has
    # no boundary to stop at and is cut off, as it should be.
    spec = OutputSpec(format="list")
    events = await collect(engine.chat(chat_request(
        [ChatMessage(role="user", content="Name twenty fruits, one per line.")],
        SamplingConfig(temperature=0.0, max_tokens=20), constraint=spec)))
    done = events[-1]
    assert isinstance(done, Done), done
    assert done.finish_reason == "stop" and done.completion_tokens < 20, done.text
    assert check_output(done.text, spec).ok


async def test_the_ladder_never_passes_off_a_cut_off_reply(any_engine: LocalEngine,
                                                           tmp_path: Path) -> None:
    store = Store(tmp_path / "kvchat.db")
    session = ChatSession(any_engine, store, "",
                          routes=RouteService.from_config(KvchatConfig()))
    spec = OutputSpec(format="json", schema=COUNTRIES)
    events = await collect(session.send(
        PROMPT, sampling=SamplingConfig(temperature=0.0, max_tokens=40),
        pinned=("temperature", "max_tokens"), output=spec))
    checks = [e for e in events if isinstance(e, OutputCheck)]
    done = events[-1]
    assert isinstance(done, Done)
    # The first two replies run into the limit mid-JSON: cut off, failed, not repaired.
    assert [c.truncated for c in checks[:2]] == [True, True]
    assert all(not c.ok and c.errors[0].startswith("cut off at 40 tokens") for c in checks[:2])
    assert "repair" not in [e.strategy for e in events if isinstance(e, Retry)]
    grammar = checks[-1]
    assert grammar.strategy == "grammar" and grammar.final
    assert done.output_ok == grammar.ok == (not grammar.truncated)
    if "gemma" in (any_engine.info.name if any_engine.info else "").lower():
        # Gemma spells the 16-digit population digit by digit: its first item alone
        # takes the 40 tokens, so there is no boundary to close at. The JSON ends on
        # the last token, or inside its string, with no room for the end of the turn:
        # cut off, failed.
        assert grammar.truncated and not done.output_ok and done.finish_reason == "length"
        assert grammar.errors[0] == ("cut off at 40 tokens: the reply reached its token "
                                     "limit before it ended")
    else:  # the grammar step plans for the limit and ends the JSON inside it
        assert done.output_ok and done.finish_reason == "stop" and done.completion_tokens < 40
        assert check_output(done.text, spec).ok
    stored = store.attempts(events[0].reply_message_id)  # type: ignore[union-attr]
    assert [a.truncated for a in stored] == [True, True, grammar.truncated]
    assert stored[0].cut_off_note == "cut off at 40 tokens"
    store.close()


def test_cli_ask_exits_non_zero_when_every_attempt_is_cut_off(kvchat_home: Path) -> None:
    # Fenced code has no budget (a program closed early is broken): at 12 tokens every
    # attempt, the grammar's too, is cut off, and the command says so and fails.
    ask = run_kvchat("ask", "--temp", "0", "--max-tokens", "12", "--ctx", "1024",
                     "--format", "code", "Write a Python function that sorts a list.",
                     home=kvchat_home, timeout=300)
    assert ask.returncode == 1, (ask.stdout, ask.stderr)
    assert "cut off at 12 tokens" in ask.stderr
    assert "still malformed after 3 attempts" in ask.stderr
    rows = json.loads(run_kvchat("retries", "--json", home=kvchat_home).stdout)
    shown = run_kvchat("retries", "show", str(rows[0]["message_id"]), home=kvchat_home)
    assert shown.stdout.count("cut off at 12 tokens ·") == 3, shown.stdout


def test_cli_ask_json_cut_off_then_valid_from_the_grammar(kvchat_home: Path) -> None:
    ask = run_kvchat("ask", "--temp", "0", "--max-tokens", "40", "--ctx", "1024",
                     "--format", "json", PROMPT, home=kvchat_home, timeout=300)
    assert ask.returncode == 0, ask.stderr
    json.loads(ask.stdout)  # stdout holds only valid JSON
    assert "attempt 1 was malformed (cut off at 40 tokens" in ask.stderr
