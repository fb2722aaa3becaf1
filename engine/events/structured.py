"""Events of the structured-output retry ladder."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from engine.events.base import _Event

RetryStrategy = Literal["as_generated", "repair", "stricter_prompt", "grammar"]
"""How an attempt at a structured reply was made: the reply as generated; the same text
with trivially broken JSON repaired (no generation); a new reply to a prompt that adds
the error and stricter instructions; a new reply under grammar-constrained decoding."""


class OutputCheck(_Event):
    """What the output checker found in one attempt at a structured reply."""

    type: Literal["output_check"] = "output_check"
    attempt: int
    """1 for the reply as generated, then 2, 3, ... for each retry."""
    strategy: RetryStrategy
    format: Literal["json", "code", "list"]
    ok: bool
    found: str
    """What the reply holds, for a person: ``a JSON object with 3 keys``,
    ``2 code blocks (python, json)``, ``a list of 5 items``, ``nothing structured``."""
    errors: list[str] = Field(default_factory=list)
    """Each problem, one line each: parse and syntax errors with their position, schema
    violations with their JSON path; a ``truncated`` attempt's first: ``cut off at N tokens``."""
    final: bool = False
    """True on the check that decides the reply (it passed, or no attempt is left)."""
    truncated: bool = False  # cut off (length, context_full) before it ended: never ok


class Retry(_Event):
    """A structured reply failed its check and another attempt starts."""

    type: Literal["retry"] = "retry"
    attempt: int
    """The number of the attempt about to be made (2 or more)."""
    strategy: RetryStrategy
    reason: str
    """The error that caused it (the previous check's first error)."""
    prompt_change: str = ""
    """What this attempt adds to the prompt; empty when the prompt is unchanged."""
