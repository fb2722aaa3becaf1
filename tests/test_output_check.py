"""The output checker's parsers: tricky cases, and fuzzing that they never raise."""

from __future__ import annotations

import json
import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.structured.checks import (
    check_code,
    check_json,
    check_list,
    check_output,
    find_code_blocks,
    find_json,
    find_list,
    schema_problem,
)
from engine.structured.ladder import Ladder, repair
from engine.structured.spec import OutputSpec, RetryPolicy

PERSON = {"type": "object", "properties": {"name": {"type": "string"},
                                           "age": {"type": "integer", "minimum": 0}},
          "required": ["name", "age"], "additionalProperties": False}


# -- JSON ------------------------------------------------------------------------------

def test_json_inside_prose_is_found() -> None:
    found = find_json('Sure! Here it is: {"name": "Ann", "age": 31} Hope that helps.')
    assert found.found and found.value == {"name": "Ann", "age": 31}


def test_braces_in_prose_before_the_value_are_skipped() -> None:
    found = find_json('Use {curly} braces like {this}. Data: [1, 2, {"a": "}"}]')
    assert found.value == [1, 2, {"a": "}"}]


def test_fenced_json_wins_over_bare_text_around_it() -> None:
    text = 'Example {"x": 1} first.\n\n```json\n{"real": true}\n```\n'
    assert find_json(text).value == {"real": True}


def test_cut_off_json_says_so() -> None:
    result = check_json('{"name": "Ann", "age": ')
    assert not result.ok
    assert "cut off" in result.errors[0]


def test_trailing_comma_reports_position() -> None:
    result = check_json('{"a": 1,\n "b": 2,\n}')
    assert not result.ok and "line 3" in result.errors[0]


def test_schema_violations_name_their_path() -> None:
    result = check_json('{"name": "Ann", "age": "thirty", "x": 1}', PERSON)
    assert not result.ok
    assert "$.age: expected integer, found a string" in result.errors
    assert any(e.startswith("$: unexpected keys") for e in result.errors)
    assert check_json('{"name": "Ann", "age": 30}', PERSON).ok


def test_a_bare_scalar_is_not_json_output_without_a_schema() -> None:
    assert not check_json("42").ok
    assert check_json("42", {"type": "integer"}).ok


def test_invalid_schema_is_named() -> None:
    assert schema_problem({"type": "banana"}) is not None
    assert schema_problem([1, 2]) is not None
    assert schema_problem(PERSON) is None


def test_deeply_nested_json_does_not_raise() -> None:
    result = check_json("[" * 100_000 + "]" * 100_000)
    assert isinstance(result.ok, bool)


def test_repair_fixes_trailing_commas_and_quotes_but_not_prose_or_a_cut() -> None:
    spec = OutputSpec(format="json")
    fixed = repair("Here: {'name': 'Ann', 'age': 31,}", spec)
    assert fixed is not None and json.loads(fixed) == {"name": "Ann", "age": 31}
    assert repair('{"items": [1, 2, 3', spec) is None  # closing it would hide the cut
    assert repair("no json at all", spec) is None


# -- code blocks -----------------------------------------------------------------------

def test_two_code_blocks_with_languages() -> None:
    text = "First:\n```python\nx = 1\n```\nthen\n```json\n{\"a\": 1}\n```\n"
    blocks = find_code_blocks(text)
    assert [(b.language, b.code, b.closed) for b in blocks] == [
        ("python", "x = 1\n", True), ("json", '{"a": 1}\n', True)]
    assert check_code(text, "python").ok


def test_fence_inside_a_string_does_not_close_the_block() -> None:
    text = '```python\ns = """\n```\n"""\n```\n'
    # CommonMark: the ``` line inside the string closes the block; what follows is
    # prose plus a new, unclosed fence. The checker must say so, not crash.
    result = check_code(text)
    assert not result.ok
    assert any("not closed" in e or "syntax" in e for e in result.errors)


def test_longer_fence_holds_a_shorter_one() -> None:
    text = '````markdown\n```python\nprint(1)\n```\n````\n'
    blocks = find_code_blocks(text)
    assert len(blocks) == 1 and blocks[0].closed and "```python" in blocks[0].code


def test_python_syntax_error_is_reported_with_its_line() -> None:
    result = check_code("```python\ndef f():\n    return (1\n```\n")
    assert not result.ok and "Python syntax error" in result.errors[0]


def test_unclosed_block_is_malformed() -> None:
    result = check_code("```python\nprint('hi')\n")
    assert not result.ok and "not closed" in result.errors[0]


def test_missing_language_is_reported() -> None:
    assert "no code block tagged python" in check_code("```\nx = 1\n```\n", "python").errors


def test_no_code_block() -> None:
    assert not check_code("just words").ok


# -- lists -----------------------------------------------------------------------------

def test_list_items_with_wrapped_lines_and_nesting() -> None:
    text = ("Plan:\n\n1. Buy milk\n   and eggs\n2. Cook\n   - stir\n   - serve\n"
            "3. Eat\n\nDone.")
    assert find_list(text) == ["Buy milk and eggs", "Cook stir serve", "Eat"]


def test_bulleted_list() -> None:
    result = check_list("- a\n- b\n* c\n")
    assert result.ok and result.value[:2] == ["a", "b"]


def test_no_list() -> None:
    assert not check_list("A paragraph with 1. a number in it.").ok


# -- grammars and the ladder's plan -----------------------------------------------------

def test_ladder_plan_follows_the_policy() -> None:
    spec = OutputSpec(format="json")
    ladder = Ladder(spec, RetryPolicy(max_attempts=3, grammar_fallback=True))
    assert ladder.retries == ["stricter_prompt", "stricter_prompt", "grammar"]
    assert Ladder(spec, RetryPolicy(max_attempts=0, grammar_fallback=True)).retries == []
    assert Ladder(spec, RetryPolicy(max_attempts=1, stricter_prompt=False)).retries == []


# -- fuzzing: no input makes a parser raise ---------------------------------------------

JSONISH = st.text(alphabet=string.printable + "{}[]\":,` \n", max_size=400)
FENCY = st.lists(st.sampled_from(["```", "```python\n", "````", "~~~", "\n", "x = (",
                                  "1. ", "- ", "  ", '"""', "{", "}", "json", "`"]),
                 max_size=60).map("".join)
FAST = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(JSONISH)
def test_fuzz_json(text: str) -> None:
    result = check_json(text, PERSON)
    assert result.ok == (not result.errors)


@FAST
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=5), inner, max_size=4),
                    max_leaves=30), st.integers(min_value=0, max_value=200))
def test_fuzz_truncated_json(value: object, cut: int) -> None:
    text = json.dumps(value)
    result = check_json(text[:cut])
    assert isinstance(result.ok, bool)
    if isinstance(value, dict | list):
        # A cut container never passes: not closed by the checker, nor through a value
        # found inside it.
        assert result.ok == (cut >= len(text)), text[:cut]
        if result.ok:
            assert result.value == value
        assert not repair(text[:cut], OutputSpec(format="json")) or cut >= len(text)


@FAST
@given(FENCY)
def test_fuzz_fences_and_lists(text: str) -> None:
    for spec in (OutputSpec(format="code", language="python"), OutputSpec(format="list"),
                 OutputSpec(format="json")):
        result = check_output(text, spec)
        assert result.found != "unchecked", result.errors


def test_huge_input_is_checked_without_raising() -> None:
    huge = ("word {" * 200_000) + "```python\n" + "x = 1\n" * 50_000
    for spec in (OutputSpec(format="json"), OutputSpec(format="code"),
                 OutputSpec(format="list")):
        assert check_output(huge, spec).found != "unchecked"
