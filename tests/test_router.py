"""The router: accuracy on the labelled set, determinism, reasons, bad input, and the
token counts its budgets use. No model is loaded here."""

from __future__ import annotations

import base64
import os
import random
from pathlib import Path

import pytest

from benchmarks.route_accuracy import evaluate
from engine.config import SamplingConfig
from engine.routing.router import Router
from engine.routing.service import RouteError, RouteService
from engine.routing.templates import load_templates
from engine.routing.token_count import TokenCounter, estimate_tokens, load_tiktoken
from tests.data.route_prompts import FOLLOW_UPS, HELD_OUT, LABELLED


@pytest.fixture(scope="module")
def router() -> Router:
    return Router(load_templates())


def test_labelled_set_is_big_and_varied() -> None:
    assert len(LABELLED) >= 120
    routes = {route for _, route in LABELLED}
    assert routes == {"code", "qa", "summarize", "chat"}
    assert sum(1 for p, _ in LABELLED if not p.isascii()) >= 8  # other languages
    assert sum(1 for p, _ in LABELLED if "\n" in p) >= 15  # pasted text and code


def test_accuracy_on_the_labelled_set(router: Router) -> None:
    accuracy, matrix, misses = evaluate(router, LABELLED, FOLLOW_UPS)
    assert accuracy >= 0.9, [(p[:60], w, d.route) for p, w, d in misses]
    for route, row in matrix.items():
        assert row[route] / sum(row.values()) >= 0.8, (route, row)


def test_accuracy_on_prompts_written_after_the_rules(router: Router) -> None:
    accuracy, _, misses = evaluate(router, HELD_OUT)
    assert accuracy >= 0.9, [(p[:60], w, d.route) for p, w, d in misses]


def test_decisions_are_deterministic(router: Router) -> None:
    prompts = [p for p, _ in LABELLED[::7]]
    first = [(d.route, d.confidence, d.reason) for d in map(router.route, prompts)]
    again = [(d.route, d.confidence, d.reason) for d in map(router.route, prompts)]
    fresh = Router(load_templates())
    assert first == again == [(d.route, d.confidence, d.reason)
                              for d in map(fresh.route, prompts)]


def test_reason_names_the_signals_that_fired(router: Router) -> None:
    decision = router.route("Fix this:\n```python\ndef f(x):\n    return x +\n```")
    assert decision.route == "code"
    assert "code fence (Python)" in decision.reason
    assert any(s.startswith("code: code fence") for s in decision.signals)
    assert 0.5 < decision.confidence <= 1.0
    summary = router.route("Summarize this: " + "The council met and agreed. " * 30)
    assert summary.route == "summarize"
    assert "asks to 'summarize' at the start" in summary.reason


def test_follow_up_keeps_the_conversation_route(router: Router) -> None:
    assert router.route("and in rust?").route != "code"
    decision = router.route("and in rust?", previous="code")
    assert decision.route == "code"
    assert "short follow-up to a code turn" in decision.reason


@pytest.mark.parametrize("text", [
    "",
    "   \n\t ",
    "a" * 1_000_000,
    " ".join(random.Random(0).choice(["lorem", "ipsum", "dolor", "sit"])
             for _ in range(200_000)),
    os.urandom(4096).decode("utf-8", "replace"),
    os.urandom(4096).decode("latin-1"),
    "\x00\x01\x02" * 1000,
], ids=["empty", "blank", "1MB-one-char", "1MB-words", "binary-utf8", "binary-latin1",
        "control-chars"])
def test_bad_input_routes_to_chat(router: Router, text: str) -> None:
    decision = router.route(text)
    assert decision.route == "chat"
    assert decision.reason


async def test_service_overrides_and_unknown_names() -> None:
    service = RouteService(load_templates())
    routed = await service.decide("hello", base=SamplingConfig(), n_ctx=2048,
                                  override="summarize")
    assert routed.event.route == "summarize"
    assert routed.event.source == "override"
    assert routed.event.confidence == 1.0
    assert routed.model_text.endswith("hello")
    assert routed.model_text.startswith(service.templates.get("summarize").instructions)
    with pytest.raises(RouteError, match=r"unknown route 'sql' \(choose from chat, code"):
        await service.decide("hello", base=SamplingConfig(), n_ctx=2048, override="sql")


async def test_budget_in_the_decision() -> None:
    service = RouteService(load_templates())
    base = SamplingConfig(max_tokens=4096)
    routed = await service.decide("Summarize this: " + "Words here. " * 50, base=base,
                                  n_ctx=8192)
    event = routed.event
    template = service.templates.get("summarize")
    assert event.route == "summarize"
    assert event.prompt_budget == template.budget.prompt_tokens(8192)
    assert event.reply_reserve == routed.reserve == template.budget.reserve_tokens(8192)
    assert event.kv_reserved == min(routed.reserve, routed.sampling.max_tokens, 4096)
    assert event.token_count in {"estimate", "tiktoken:cl100k_base"}
    assert event.prompt_tokens > 50


def test_estimate_is_labelled_and_plausible() -> None:
    counter = TokenCounter(tiktoken_source=None)
    count = counter.count("The quick brown fox jumps over the lazy dog.")
    assert count.method == "estimate"
    assert 8 <= count.tokens <= 14
    assert estimate_tokens("") == 0
    assert TokenCounter(exact=lambda text: 7).count("x").method == "exact"


def test_tiktoken_from_a_local_file_only(tmp_path: Path) -> None:
    # A byte-level BPE with one merge, written locally: tiktoken builds it offline.
    ranks = [bytes([b]) for b in range(256)] + [b"ab"]
    path = tmp_path / "tiny.tiktoken"
    path.write_text("".join(f"{base64.b64encode(tok).decode()} {rank}\n"
                            for rank, tok in enumerate(ranks)))
    count = load_tiktoken(path)
    assert count is not None
    assert count("abab") == 2
    counter = TokenCounter(tiktoken_source=path)
    assert counter.count("abab").method == "tiktoken:tiny"
    assert load_tiktoken(tmp_path / "missing.tiktoken") is None
