"""A JSON Schema said in words, for a prompt.

Small models copy a schema quoted in their prompt back as their answer (SmolLM2-135M did
in 10 of 21 first attempts in ``benchmarks/answer_quality.py``); a sentence naming the
keys and their types asks for the value instead of showing one to imitate.
"""

from __future__ import annotations

import json
from typing import Any

MAX_WORDS_CHARS = 600
"""Longest description; past it, the object's keys alone are named."""
MAX_DEPTH = 3

_TYPES = {"string": "a string", "integer": "an integer", "number": "a number",
          "boolean": "true or false", "null": "null"}


def describe_schema(schema: dict[str, Any]) -> str:
    """``an object with the keys "name" (a string) and "age" (an integer)``."""
    words = _describe(schema, 0)
    if len(words) <= MAX_WORDS_CHARS:
        return words
    keys = list(schema.get("properties") or {})
    return f"an object with the keys {_and([json.dumps(k) for k in keys])}" if keys \
        else "a JSON value"


def _describe(schema: Any, depth: int) -> str:
    if not isinstance(schema, dict):
        return "a JSON value"
    if "enum" in schema and isinstance(schema["enum"], list) and schema["enum"]:
        return "one of " + _or([json.dumps(v) for v in schema["enum"]])
    if "const" in schema:
        return f"exactly {json.dumps(schema['const'])}"
    kind = schema.get("type")
    if isinstance(kind, list):
        return _or([_describe({**schema, "type": k}, depth) for k in kind])
    if kind == "object" or (kind is None and "properties" in schema):
        return _object(schema, depth)
    if kind == "array":
        return _array(schema, depth)
    return _TYPES.get(str(kind), "a JSON value") + _bounds(schema)


def _object(schema: dict[str, Any], depth: int) -> str:
    props = schema.get("properties")
    if not isinstance(props, dict) or not props:
        return "an object"
    if depth >= MAX_DEPTH:
        return f"an object with the keys {_and([json.dumps(k) for k in props])}"
    parts = [f"{json.dumps(key)} ({_describe(value, depth + 1)})"
             for key, value in props.items()]
    return f"an object with the keys {_and(parts)}"


def _array(schema: dict[str, Any], depth: int) -> str:
    items = schema.get("items")
    count = _count(schema.get("minItems"), schema.get("maxItems"))
    if not isinstance(items, dict) or depth >= MAX_DEPTH:
        return f"an array of {count} items" if count else "an array"
    item = _describe(items, depth + 1)
    for one, many in _PLURALS.items():  # "an array of 3 strings", "... of objects with"
        if item.startswith(one):
            return f"an array of {count + ' ' if count else ''}{many}{item[len(one):]}"
    return f"an array of {count + ' ' if count else ''}items, each {item}"


_PLURALS = {"an object": "objects", "a string": "strings", "an integer": "integers",
            "a number": "numbers"}


def _count(low: Any, high: Any) -> str:
    if isinstance(low, int) and low == high:
        return f"exactly {low}"
    if isinstance(low, int) and isinstance(high, int):
        return f"{low} to {high}"
    if isinstance(low, int) and low > 0:
        return f"at least {low}"
    if isinstance(high, int):
        return f"at most {high}"
    return ""


def _bounds(schema: dict[str, Any]) -> str:
    low, high = schema.get("minimum"), schema.get("maximum")
    if isinstance(low, int | float) and isinstance(high, int | float):
        return f" from {low} to {high}"
    if isinstance(low, int | float):
        return f", at least {low}"
    if isinstance(high, int | float):
        return f", at most {high}"
    return ""


def _and(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _or(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " or " + parts[-1]
