"""A schema's regular expressions matched in linear time.

``jsonschema`` matches ``pattern`` and ``patternProperties`` with Python's ``re``, a
backtracking engine: a pattern such as ``^(a+)+$`` takes time exponential in the length
of the text it fails on, and the text is a model's reply. Here those keywords match with
RE2 (``google-re2``), whose time grows linearly with the text whatever the pattern.

RE2 has no lookaround and no backreferences (the features that need backtracking); a
schema that uses them, or a pattern too large for RE2's memory budget, is refused when
it is loaded, in one line, rather than checked with an unbounded engine. So is a schema
with both ``unevaluatedProperties`` and ``patternProperties``: ``jsonschema`` matches
property names for the former with ``re`` itself, out of reach of this module.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import re2
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError

_NOT_SCHEMAS = ("const", "enum", "examples", "default")
"""Keywords whose values are data, not schemas: a key named ``pattern`` there is text."""


class PatternError(ValueError):
    """A pattern RE2 cannot run: the message says why, in one line."""


def _options() -> Any:
    options = re2.Options()
    options.log_errors = False  # RE2 would print each refusal on stderr itself
    return options


@functools.lru_cache(maxsize=512)
def compiled(pattern: str) -> Any:
    """``pattern`` compiled by RE2; PatternError if RE2 cannot run it."""
    try:
        return re2.compile(pattern, _options())
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise PatternError(f"pattern {_quote(pattern)} cannot be matched in linear time "
                           f"(RE2: {reason}; lookaround and backreferences are not "
                           "supported)") from None


def search(pattern: str, text: str) -> bool:
    """Whether ``pattern`` matches anywhere in ``text`` (JSON Schema's ``pattern``)."""
    return compiled(pattern).search(text) is not None


def _quote(pattern: str) -> str:
    shown = pattern if len(pattern) <= 60 else pattern[:59] + "…"
    return repr(shown)


def _patterns(node: Any, depth: int = 0) -> Iterator[tuple[str, str]]:
    """Every (keyword, pattern) in a schema: ``pattern`` values and
    ``patternProperties`` keys, and ``unevaluatedProperties`` (with an empty pattern) so
    that the caller sees it."""
    if depth > 200:
        return
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _NOT_SCHEMAS:
                continue
            if key == "pattern" and isinstance(value, str):
                yield "pattern", value
            elif key == "patternProperties" and isinstance(value, dict):
                yield from (("patternProperties", p) for p in value)
            elif key == "unevaluatedProperties":
                yield "unevaluatedProperties", ""
            yield from _patterns(value, depth + 1)
    elif isinstance(node, list):
        for item in node:
            yield from _patterns(item, depth + 1)


def pattern_problem(schema: Any) -> str | None:
    """Why a schema's patterns cannot be checked in linear time, or None."""
    found = list(_patterns(schema))
    keywords = {keyword for keyword, _ in found}
    if {"unevaluatedProperties", "patternProperties"} <= keywords:
        return ("unevaluatedProperties together with patternProperties is not supported "
                "(its property names would be matched by a backtracking regex engine)")
    for keyword, pattern in found:
        if keyword != "unevaluatedProperties":
            try:
                compiled(pattern)
            except PatternError as exc:
                return str(exc)
    return None


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[Any]:
    if validator.is_type(instance, "string") and not search(pattern, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(validator: Any, patterns: dict[str, Any], instance: Any,
                        schema: Any) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties(validator: Any, additional: Any, instance: Any,
                           schema: Any) -> Iterator[Any]:
    """jsonschema's ``additionalProperties``, property names matched by RE2."""
    if not validator.is_type(instance, "object"):
        return
    properties = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    extras = [key for key in instance if key not in properties
              and not any(search(p, key) for p in patterns)]
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif not additional and extras:
        joined = ", ".join(repr(each) for each in sorted(extras))
        if patterns:
            verb = "does" if len(extras) == 1 else "do"
            yield ValidationError(f"{joined} {verb} not match any of the regexes: "
                                  f"{', '.join(repr(p) for p in sorted(patterns))}")
        else:
            verb = "was" if len(extras) == 1 else "were"
            yield ValidationError(f"Additional properties are not allowed ({joined} {verb} "
                                  "unexpected)")


LinearValidator = validators.extend(Draft202012Validator, {
    "pattern": _pattern,
    "patternProperties": _pattern_properties,
    "additionalProperties": _additional_properties,
})
"""Draft 2020-12, its regular expressions matched by RE2."""
