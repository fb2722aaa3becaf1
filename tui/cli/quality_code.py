"""``kvchat quality --code``: the pass rate of each model on small programming tasks.

The tasks, the code extraction and the test runner are the answer-quality benchmark's
(``benchmarks/answer_quality_data.py``'s ``CODE`` and ``answer_quality_checks.py``'s
``check_code``: the reply's Python block run against asserts in a fresh ``python -I``
with a time limit), imported from the source checkout this kvchat runs from. Each
prompt is sent as the app sends a message routed to ``code`` (the config's system
prompt, the route's instructions with the message), once, greedily: one attempt, no
retry ladder, so what is counted is the model's own answer.

A base model (no chat template in its GGUF, as Gemma 3 270M) is not asked in chat
turns: it gets the task as a function to complete, ``def NAME(ARGS):`` (the signature
the task names) with the task as its docstring, and writes the body, greedily, until
the function ends (a line back at column 0) or 256 tokens.
"""

from __future__ import annotations

import asyncio
import importlib
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from engine.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
MAX_TOKENS = 384
N_CTX = 2048


def harness() -> tuple[list[dict[str, Any]], ModuleType]:
    """(the tasks, the checkers' module) from the benchmark in the source checkout."""
    if not (ROOT / "benchmarks" / "answer_quality_checks.py").is_file():
        raise ConfigError("--code needs the benchmarks/ folder of a kvchat source checkout "
                          "(its programming tasks and test runner)")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    data: ModuleType = importlib.import_module("benchmarks.answer_quality_data")
    checks: ModuleType = importlib.import_module("benchmarks.answer_quality_checks")
    return list(data.CODE), checks


def code_results(path: Path, limit: int | None = None,
                 progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """One row per task: name, passed, why, tokens."""
    from engine.model.gguf_header import read_gguf_header

    say = progress or (lambda _m: None)
    if read_gguf_header(path).chat_template is None:
        return _completions(path, limit, say)
    return asyncio.run(_run(path, limit, say))


def _completions(path: Path, limit: int | None,
                 say: Callable[[str], None]) -> list[dict[str, Any]]:
    from engine.quant.scoring import Scorer

    tasks, checks = harness()
    rows = []
    with Scorer(path, N_CTX) as scorer:
        for item in tasks[:limit]:
            signature = re.search(r"`(\w+\([^`]*\))`", item["prompt"])
            head = f'def {signature[1] if signature else item["name"] + "()"}:\n' \
                   f'    """{item["prompt"]}"""\n'
            body = scorer.complete(head, 256, lambda text: _ENDED.search(text) is not None)
            match = _ENDED.search(body)
            code = head + (body[:match.start()] if match else body)
            passed, why = checks.run_tests(code, item["name"], item["tests"])
            rows.append({"task": item["name"], "passed": passed, "why": why,
                         "tokens": len(scorer.tokenize(body))})
            say(f"  {path.name} {item['name']}: {'pass' if passed else 'fail'}")
    return rows


_ENDED = re.compile(r"\n(?=[^\s])")
"""A line back at column 0: the function is over."""


async def _run(path: Path, limit: int | None,
               say: Callable[[str], None]) -> list[dict[str, Any]]:
    from engine.api import ChatMessage, ChatRequest
    from engine.backends.local import LocalEngine
    from engine.config import KvchatConfig, ModelConfig, SamplingConfig
    from engine.events import Done, Error
    from engine.routing.templates import load_templates, with_instructions

    tasks, checks = harness()
    instructions = load_templates(None).get("code").instructions
    system = KvchatConfig().chat.system_prompt
    sampling = SamplingConfig(temperature=0.0, seed=0, max_tokens=MAX_TOKENS)
    engine = LocalEngine(ModelConfig(path=path, n_ctx=N_CTX), sampling)
    await engine.start()
    rows = []
    try:
        for item in tasks[:limit]:
            messages = (ChatMessage(role="system", content=system),
                        ChatMessage(role="user",
                                    content=with_instructions(item["prompt"], instructions)))
            final: Done | Error | None = None
            async for event in engine.chat(ChatRequest(messages=messages)):
                if isinstance(event, Done | Error):
                    final = event
            if isinstance(final, Done):
                passed, why = checks.check_code(final.text, item)
                tokens = final.completion_tokens
            else:
                passed, why, tokens = False, getattr(final, "message", "no reply"), 0
            rows.append({"task": item["name"], "passed": passed, "why": why,
                         "tokens": tokens})
            say(f"  {path.name} {item['name']}: {'pass' if passed else 'fail'}")
    finally:
        await engine.close()
    return rows
