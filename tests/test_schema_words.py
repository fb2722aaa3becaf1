"""The schema said in words for a prompt, instead of quoted (small models copy a quoted
schema back as their answer)."""

from __future__ import annotations

from engine.structured.ladder import format_instructions, stricter_instructions
from engine.structured.schema_words import MAX_WORDS_CHARS, describe_schema
from engine.structured.spec import OutputSpec

PERSON = {"type": "object", "properties": {
    "name": {"type": "string"}, "age": {"type": "integer", "minimum": 0, "maximum": 130},
    "tags": {"type": "array", "items": {"type": "string"}, "minItems": 3, "maxItems": 3},
    "pets": {"type": "array", "items": {"type": "object", "properties": {
        "kind": {"enum": ["cat", "dog"]}, "legs": {"type": "integer"}}}},
    "note": {"type": ["string", "null"]}}}


def test_every_key_and_type_is_named() -> None:
    assert describe_schema(PERSON) == (
        'an object with the keys "name" (a string), "age" (an integer from 0 to 130), '
        '"tags" (an array of exactly 3 strings), "pets" (an array of objects with the keys '
        '"kind" (one of "cat" or "dog") and "legs" (an integer)) and "note" (a string or '
        "null)")


def test_the_instructions_never_quote_the_schema() -> None:
    spec = OutputSpec(format="json", schema=PERSON)
    for text in (format_instructions(spec), stricter_instructions(spec, "bad")):
        assert '"type"' not in text and "properties" not in text
        assert 'a JSON object with the keys "name" (a string)' in text
    assert format_instructions(OutputSpec(format="json")) == \
        "Reply with only a JSON value, and nothing else."


def test_a_huge_schema_is_named_by_its_keys() -> None:
    wide = {"type": "object", "properties": {f"key{i}": {"type": "object", "properties": {
        "x": {"type": "string"}, "y": {"type": "number"}}} for i in range(60)}}
    words = describe_schema(wide)
    assert words.startswith('an object with the keys "key0", "key1"') and "(" not in words
    assert len(describe_schema({"type": "array"})) < MAX_WORDS_CHARS
    assert describe_schema({"not": "a schema"}) == "a JSON value"
