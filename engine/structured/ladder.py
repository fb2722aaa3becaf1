"""The retry ladder: check a structured reply and try again, more strictly each time.

Steps, each one attempt: (1) the reply as generated; for JSON, a repair of trivially
broken JSON (``json-repair``: trailing commas, single quotes, unquoted keys), which
costs no generation and never completes a structure that does not close; (2..) a new
reply whose prompt adds the precise error and stricter instructions; (last) a new reply
under grammar-constrained decoding, which cannot produce malformed output and plans for
the token limit (:mod:`engine.structured.budget`). The route's template sets which
steps run and how many (:class:`engine.structured.spec.RetryPolicy`). Backend-agnostic:
it sees the engine only through the ``generate`` callable the session hands it.

A reply cut off before it ended (``finish_reason`` length or context_full) is never
accepted: its check fails with "cut off at N tokens", it is not repaired, and the ladder
goes on to its next step or ends with ``output_ok: false``.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import json_repair

from engine.events import Done, Error, Event, OutputCheck, Retry, RetryStrategy
from engine.structured.checks import CheckResult, check_output, find_json, json_end
from engine.structured.schema_words import describe_schema
from engine.structured.spec import OutputSpec, RetryPolicy

DEFAULT_POLICY = RetryPolicy(max_attempts=2, stricter_prompt=True, grammar_fallback=True)
"""For ``--format``: one stricter prompt, then the grammar."""
UNSUPPORTED_CODES = frozenset({"constraint_invalid", "constraint_unsupported"})
"""Error codes with which a backend refuses a constrained step before generating."""


@dataclass(frozen=True)
class Step:
    number: int
    """1 for the first attempt."""
    strategy: RetryStrategy
    prompt_change: str = ""
    """Appended to the user's message for this attempt."""
    constraint: OutputSpec | None = None
    """Grammar-constrained decoding for this attempt."""


@dataclass
class Attempt:
    """One attempt as it is stored for review."""

    number: int
    strategy: RetryStrategy
    text: str
    check: CheckResult
    prompt_change: str = ""
    completion_tokens: int = 0
    elapsed_s: float = 0.0


@dataclass
class Ladder:
    """The steps still to take for one reply."""

    spec: OutputSpec
    policy: RetryPolicy
    base_change: str = ""
    """What every attempt's prompt carries (format instructions for ``--format``)."""
    retries: list[RetryStrategy] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = self.policy.max_attempts
        grammar = self.policy.grammar_fallback and n >= 1
        stricter = (n - grammar) if self.policy.stricter_prompt else 0
        self.retries = ["stricter_prompt"] * stricter + ["grammar"] * grammar

    def first(self) -> Step:
        return Step(1, "as_generated", self.base_change)

    @property
    def repairs(self) -> bool:
        return self.spec.format == "json" and self.policy.repair

    def next(self, number: int, failed: CheckResult) -> Step | None:
        """The generation after a failed attempt ``number``, or None when none is left."""
        if not self.retries:
            return None
        strategy = self.retries.pop(0)
        change = stricter_instructions(self.spec, failed.errors[0] if failed.errors else "",
                                       failed.cut_off_at)
        return Step(number + 1, strategy, change,
                    self.spec if strategy == "grammar" else None)


def format_instructions(spec: OutputSpec) -> str:
    """What a message asked for with ``--format`` carries from its first attempt."""
    if spec.format == "json":
        return f"Reply with only {_json_phrase(spec)}, and nothing else."
    if spec.format == "code":
        return f"Reply with {spec.describe()} (```), closed with ```."
    return "Reply with a list: one item per line, each starting with \"- \"."


def stricter_instructions(spec: OutputSpec, error: str, cut_off_at: int | None = None,
                          ) -> str:
    because = f"Your previous reply could not be used: {error}." if error else \
        "Your previous reply could not be used."
    if cut_off_at is not None:
        because += f" Keep this reply well under {cut_off_at} tokens."
    if spec.format == "json":
        rule = (f"Reply with only {_json_phrase(spec)}: no explanation, no code fence, "
                "nothing before or after it.")
    elif spec.format == "code":
        lang = spec.language or "the language's name"
        rule = (f"Reply with only one fenced code block: a line ```{lang}, the code, then "
                "a line ```. Nothing before or after it.")
    else:
        rule = "Reply with only the list: one item per line, each line starting with \"- \"."
    return f"{because}\n{rule}"


def _json_phrase(spec: OutputSpec) -> str:
    """``a JSON object with the keys "name" (a string) and ...``: the schema in words,
    not quoted (engine/structured/schema_words.py says why)."""
    if spec.json_schema is None:
        return "a JSON value"
    words = describe_schema(spec.json_schema)
    for article in ("an ", "a "):
        if words.startswith(article) and words != "a JSON value":
            return "a JSON " + words[len(article):]
    return f"JSON: {words}"


def repair(text: str, spec: OutputSpec) -> str | None:
    """The reply's JSON repaired and re-serialised, or None when there is nothing a
    repair can fix: no object or array to start from, or one that never closes. Closing
    the brackets of JSON that stops short, or finishing its last value (``"population":
    6`` made a number), would pass off a fragment as the answer."""
    found = find_json(text)
    start = found.span[0] if found.error else 0
    end = json_end(text, start) if text[start:start + 1] in ("{", "[") else None
    if end is None:
        return None
    try:
        value = json_repair.loads(text[start:end])
    except Exception:  # the repairer is best effort; a crash means "cannot repair"
        return None
    if not isinstance(value, dict | list) or not value:
        return None
    return json.dumps(value, indent=2, ensure_ascii=False)


Generate = Callable[[Step], AsyncIterator[Event]]
Record = Callable[[Attempt], None]


async def run_ladder(ladder: Ladder, generate: Generate, record: Record,
                     ) -> AsyncIterator[Event]:
    """Every attempt's events, an ``output_check`` after each, a ``retry`` before each
    new one, and one final ``done`` (the last attempt's, with ``attempts`` and
    ``output_ok``). An ``error`` or a cancelled attempt ends the ladder there."""
    spec = ladder.spec
    step: Step | None = ladder.first()
    previous: Done | None = None
    while step is not None:
        started = time.perf_counter()
        done: Done | None = None
        async for event in generate(step):
            if isinstance(event, Done):
                done = event  # held back: only the ladder's last Done goes out
            elif (isinstance(event, Error) and previous is not None
                  and event.code in UNSUPPORTED_CODES):
                # The backend cannot do this step: the reply ends failed, saying why.
                yield OutputCheck(attempt=step.number, strategy=step.strategy,
                                  format=spec.format, ok=False, found="not attempted",
                                  errors=[f"{step.strategy} step skipped: {event.message}"],
                                  final=True)
                yield previous.model_copy(update={"attempts": step.number - 1,
                                                  "output_ok": False})
                return
            else:
                yield event
                if isinstance(event, Error):
                    return
        if done is None:
            return
        previous = done
        if done.finish_reason == "cancelled":
            yield done.model_copy(update={"attempts": step.number})
            return
        check = check_output(done.text, spec, **_cut_off(done))
        attempt = Attempt(step.number, step.strategy, done.text, check, step.prompt_change,
                          done.completion_tokens, time.perf_counter() - started)
        final_text, number = done.text, step.number
        if (fixed := _repaired(ladder, check, done.text)) is not None:
            yield _check_event(attempt, spec, final=False)
            record(attempt)
            number += 1
            yield Retry(attempt=number, strategy="repair", reason=_first(check))
            attempt = Attempt(number, "repair", fixed, check_output(fixed, spec))
            if attempt.check.ok:
                final_text = fixed
            else:  # it parses now: its schema errors are what the model should hear
                check = attempt.check
        step = None if attempt.check.ok else ladder.next(number, check)
        yield _check_event(attempt, spec, final=step is None)
        record(attempt)
        if step is None:
            yield done.model_copy(update={"attempts": number, "output_ok": attempt.check.ok,
                                          "text": final_text})
            return
        yield Retry(attempt=step.number, strategy=step.strategy, reason=_first(check),
                    prompt_change=step.prompt_change
                    + ("\n(decoding constrained by a grammar)" if step.constraint else ""))


def _repaired(ladder: Ladder, check: CheckResult, text: str) -> str | None:
    """The reply repaired, where a repair applies. It fixes syntax only: JSON that parses
    but breaks the schema needs the model, and a cut-off reply needs a new one (closing
    its brackets would hide the cut)."""
    if check.ok or check.value is not None or check.truncated or not ladder.repairs:
        return None
    return repair(text, ladder.spec)


def _cut_off(done: Done) -> dict[str, Any]:
    """The check's arguments for a reply that stopped before it ended by itself."""
    if done.finish_reason == "length":
        return {"cut_off_at": done.completion_tokens}
    if done.finish_reason == "context_full":
        return {"cut_off_at": done.completion_tokens, "cut_by": "the end of the context"}
    return {}


def _first(check: CheckResult) -> str:
    return check.errors[0] if check.errors else "the output check failed"


def _check_event(attempt: Attempt, spec: OutputSpec, final: bool) -> OutputCheck:
    check = attempt.check
    return OutputCheck(attempt=attempt.number, strategy=attempt.strategy, format=spec.format,
                       ok=check.ok, found=check.found, errors=check.errors, final=final,
                       truncated=check.truncated)
