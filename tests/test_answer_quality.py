"""The answer-quality benchmark's checkers tell good answers from bad ones (no model):
code runs against its tests in a subprocess, facts, summaries, chat rules and JSON
schemas each fail when the answer is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.answer_quality_checks import (
    check_chat,
    check_code,
    check_json,
    check_qa,
    check_summary,
    extract_code,
    run_tests,
)
from benchmarks.answer_quality_data import CHAT, CODE, JSON, QA, SUMMARIZE

PRIME = next(item for item in CODE if item["name"] == "is_prime")
GOOD_PRIME = """Here it is:

```python
def is_prime(n):
    if n < 2:
        return False
    i = 2
    while i * i <= n:
        if n % i == 0:
            return False
        i += 1
    return True
```

It tries divisors up to the square root."""
# Wrong for 9: the loop stops before the square root.
BAD_PRIME = GOOD_PRIME.replace("i * i <= n", "i * i < n")


def test_every_set_has_at_least_twenty_items() -> None:
    for items in (CODE, QA, SUMMARIZE, CHAT, JSON):
        assert len(items) >= 20


def test_code_runs_against_the_tests_and_can_fail() -> None:
    assert check_code(GOOD_PRIME, PRIME) == (True, "")
    ok, why = check_code(BAD_PRIME, PRIME)
    assert not ok and "AssertionError" in why
    ok, why = check_code("I cannot write that function.", PRIME)
    assert not ok and "SyntaxError" in why
    ok, why = check_code("```python\ndef is_prime_number(n):\n    return True\n```", PRIME)
    assert not ok and "ImportError" in why


def test_code_runs_isolated_with_a_time_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    ok, why = run_tests("def f():\n    while True:\n        pass\n", "f", "f()", timeout_s=1)
    assert (ok, why) == (False, "timed out after 1 s")
    # -I: PYTHONPATH is ignored, so the tests' own modules are out of the code's reach.
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    ok, why = run_tests("import conftest\ndef f():\n    return 1\n", "f", "assert f() == 1")
    assert not ok and "ModuleNotFoundError" in why


def test_code_is_taken_from_the_block_that_defines_the_function() -> None:
    reply = ("```python\nprint(is_prime(7))\n```\n\n```python\ndef is_prime(n):\n"
             "    return n == 7\n```\n")
    assert extract_code(reply, "is_prime") == "def is_prime(n):\n    return n == 7\n"
    assert extract_code("def is_prime(n): return True", "is_prime") \
        == "def is_prime(n): return True"


def test_a_fact_must_be_there_as_a_whole_word() -> None:
    spider = next(item for item in QA if "spider" in item["prompt"])
    assert check_qa("A spider has eight legs.", spider)[0]
    assert check_qa("Spiders have 8 legs", spider)[0]
    assert not check_qa("A spider has 18 legs, or six.", spider)[0]
    assert not check_qa("Spiders have 8,000 legs or 2.8 legs.", spider)[0]
    assert check_qa("Spiders have 8.", spider)[0]


def test_a_summary_must_be_shorter_and_keep_the_entities() -> None:
    apollo = SUMMARIZE[0]
    good = "- Apollo 11 landed on the Moon in 1969.\n- Armstrong and Aldrin walked on it."
    assert check_summary(good, apollo) == (True, "")
    ok, why = check_summary("- Apollo 11 landed on the Moon in 1969.", apollo)
    assert not ok and "Armstrong" in why
    ok, why = check_summary(apollo["source"] + " Armstrong.", apollo)
    assert not ok and "not shorter" in why


def test_chat_rules_pass_and_fail() -> None:
    by_prompt = {item["prompt"]: item for item in CHAT}
    french = by_prompt["Say hello in French."]
    assert check_chat("Bonjour !", french)[0]
    assert not check_chat("Hello in French is hola.", french)[0]
    colors = by_prompt["List three colors."]
    assert check_chat("1. Red\n2. Blue\n3. Green", colors)[0]
    assert not check_chat("Red and blue.", colors)[0]
    one = by_prompt["In one sentence, tell me how your day is going."]
    assert check_chat("My day is going well, thanks!", one)[0]
    assert not check_chat("It is going well. Thanks for asking!", one)[0]
    count = by_prompt["Count from one to five."]
    assert check_chat("1, 2, 3, 4, 5", count)[0]
    assert not check_chat("1, 2, 4, 3, 5", count)[0]
    joke = by_prompt["Tell me a short joke about cats."]
    assert check_chat("Why did the cat sit on the computer? To keep an eye on the mouse.",
                      joke)[0]
    # An echo of the prompt gets no credit for the prompt's own words.
    assert not check_chat("Tell me a short joke about cats.\nTell me a short joke about "
                          "cats.", joke)[0]
    season = by_prompt["In fewer than ten words, what is your favourite season?"]
    assert check_chat("Autumn, for the colours.", season)[0]
    assert not check_chat("I love the long warm evenings of summer more than anything.",
                          season)[0]


def test_json_must_validate_against_the_schema() -> None:
    person = JSON[0]
    assert check_json('{"name": "Ana", "age": 31}', person) == (True, "")
    assert check_json('Sure:\n```json\n{"name": "Ana", "age": 31}\n```', person)[0]
    ok, why = check_json('{"name": "Ana", "age": "31"}', person)
    assert not ok and "age" in why
    ok, why = check_json('{"name": "Ana"}', person)
    assert not ok and "age" in why
    assert not check_json("Ana is 31 years old.", person)[0]
