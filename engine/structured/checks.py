"""Find and check the structure in a reply: a JSON value, fenced code blocks, a list.

Parsing leans on maintained libraries: :mod:`json` for values, ``jsonschema`` for
schemas (its patterns matched by RE2, :mod:`engine.structured.patterns`),
``markdown-it-py`` (CommonMark) for fences and lists, :mod:`ast` for a Python syntax
check. Nothing is ever executed. No function here raises on any input: every
problem becomes a line in ``errors``.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from markdown_it import MarkdownIt

from engine.structured.patterns import LinearValidator, pattern_problem
from engine.structured.spec import OutputSpec

MAX_CANDIDATES = 64
"""Start positions tried when looking for a JSON value in prose: bounded so that text
full of brackets cannot make the search quadratic."""
MAX_ERRORS = 8


@dataclass(frozen=True)
class CodeBlock:
    language: str
    code: str
    line: int
    """1-based line of the opening fence in the reply."""
    closed: bool


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    found: str
    """What the reply holds, for a person."""
    errors: list[str] = field(default_factory=list)
    value: Any = None
    """The parsed JSON value, the code blocks, or the list items (None for a reply that
    was cut off: nothing in it is offered as the answer)."""
    cut_off_at: int | None = None
    """Tokens at which the reply was cut off (its token limit or a full context), before
    it ended by itself; None when it ended."""

    @property
    def truncated(self) -> bool:
        return self.cut_off_at is not None


def _markdown() -> MarkdownIt:
    return MarkdownIt("commonmark")


# -- JSON ------------------------------------------------------------------------------


@dataclass(frozen=True)
class JsonFind:
    value: Any = None
    found: bool = False
    error: str = ""
    """Why the likeliest candidate did not parse, when nothing did."""
    span: tuple[int, int] = (0, 0)
    """Where the value (or the failed candidate) sits in the text."""


def find_json(text: str) -> JsonFind:
    """The first complete JSON value in ``text``: a fenced ``json`` (or untagged) block
    that parses, else the whole text when it is one value, else the first object or
    array that parses starting at a ``{`` or ``[`` in the prose.

    A value nested inside a candidate that read as JSON and then failed is never taken:
    the inner object of a malformed or cut-off outer one is not the answer. A candidate
    that is cut off (valid JSON up to the end of the text) ends the search with that
    error, since everything after its start lies inside it."""
    for block in find_code_blocks(text):
        if block.language in ("json", "") and block.code.strip():
            parsed = _loads(block.code)
            if parsed.found:
                return parsed
    whole = _loads(text.strip())
    if whole.found:
        return whole
    decoder = json.JSONDecoder()
    first_error: JsonFind | None = None
    tried = 0
    pos = 0
    while tried < MAX_CANDIDATES:
        starts = [i for i in (text.find("{", pos), text.find("[", pos)) if i >= 0]
        if not starts:
            break
        start = min(starts)
        tried += 1
        try:
            value, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError as exc:
            if _cut_off(exc, text):
                return JsonFind(error=_describe(exc, text), span=(start, len(text)))
            if first_error is None:
                first_error = JsonFind(error=_describe(exc, text), span=(start, len(text)))
            pos = _after_failed(text, start, exc.pos)
            if pos is None:
                break
            continue
        except RecursionError:
            if first_error is None:
                first_error = JsonFind(error="JSON nested too deeply", span=(start, len(text)))
            pos = start + 1
            continue
        return JsonFind(value=value, found=True, span=(start, end))
    if first_error is not None:
        return first_error
    return JsonFind(error="no JSON object or array in the reply")


def _cut_off(exc: json.JSONDecodeError, text: str) -> bool:
    """Whether the decoder read valid JSON up to the end of ``text`` (a string that
    never closes is reported at its start, every other cut at the end)."""
    return exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string")


def _after_failed(text: str, start: int, error_at: int) -> int | None:
    """Where to look for the next candidate after the one at ``start`` failed at
    ``error_at``: past its closing bracket when it read as JSON for more than its
    opening bracket (so nothing inside it is taken), else the next character; None when
    such a candidate never closes."""
    rest = text[start + 1:]
    first_token = start + 1 + len(rest) - len(rest.lstrip())
    if error_at <= first_token:
        return start + 1  # prose in brackets: `{curly}`, `[see below]`
    return json_end(text, start)


_STRUCTURAL = re.compile(r'[\\"{}\[\]]')


def json_end(text: str, start: int) -> int | None:
    """The index after the bracket that closes the object or array opening at
    ``start``, reading strings as JSON does; None when the text ends first. Linear,
    and it visits only quotes, backslashes and brackets."""
    depth = 0
    in_string = False
    escaped = -1
    for match in _STRUCTURAL.finditer(text, start):
        i = match.start()
        char = text[i]
        if i == escaped:
            continue
        if in_string:
            if char == "\\":
                escaped = i + 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def _loads(text: str) -> JsonFind:
    if not text:
        return JsonFind(error="the reply is empty")
    try:
        return JsonFind(value=json.loads(text), found=True, span=(0, len(text)))
    except json.JSONDecodeError as exc:
        return JsonFind(error=_describe(exc, text))
    except RecursionError:
        return JsonFind(error="JSON nested too deeply")


def _describe(exc: json.JSONDecodeError, text: str) -> str:
    if _cut_off(exc, text):
        return f"the JSON is cut off (line {exc.lineno}): {exc.msg}"
    return f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"


def schema_problem(schema: Any) -> str | None:
    """Why ``schema`` is not a usable JSON Schema, or None."""
    if not isinstance(schema, dict | bool):
        return "a JSON Schema must be an object"
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        return f"invalid JSON Schema: {exc.message}"
    except RecursionError:
        return "invalid JSON Schema: nested too deeply"
    if isinstance(schema, dict) and (ref := _remote_ref(schema)):
        return f"a $ref outside the schema is not supported (nothing is downloaded): {ref}"
    if problem := pattern_problem(schema):
        return problem
    try:
        LinearValidator(schema).is_valid(None)  # resolves $refs: a missing one fails
    except Exception as exc:
        return f"the schema cannot be applied: {_short(str(exc).splitlines()[0])}"
    return None


def _remote_ref(node: Any, depth: int = 0) -> str | None:
    if depth > 200:
        return None
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and not ref.startswith("#"):
            return ref
        children: Any = node.values()
    elif isinstance(node, list):
        children = node
    else:
        return None
    for child in children:
        if found := _remote_ref(child, depth + 1):
            return found
    return None


def schema_errors(value: Any, schema: dict[str, Any]) -> list[str]:
    """Each violation as ``$.path: message``, in document order."""
    validator = LinearValidator(schema)  # patterns matched in linear time
    try:
        errors = sorted(validator.iter_errors(value), key=lambda e: [str(p) for p in e.path])
    except RecursionError:
        return ["$: nested too deeply to validate"]
    except Exception as exc:  # an unresolvable $ref surfaces only while validating
        return [f"$: the schema cannot be applied: {_short(str(exc).splitlines()[0])}"]
    return [f"{_json_path(e.absolute_path)}: {_violation(e)}" for e in errors[:MAX_ERRORS]]


def _violation(error: Any) -> str:
    """jsonschema's message, without a repr of a large instance."""
    if error.validator == "type":
        wanted = error.validator_value
        wanted = " or ".join(wanted) if isinstance(wanted, list) else wanted
        return f"expected {wanted}, found {_json_type(error.instance)}"
    if error.validator == "enum":
        return _short(f"must be one of {json.dumps(error.validator_value)}")
    if error.validator == "additionalProperties":
        return _short(error.message.replace("Additional properties", "unexpected keys"))
    return _short(error.message)


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
             int: "an integer", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _json_path(path: Any) -> str:
    out = "$"
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _short(message: str, limit: int = 160) -> str:
    return message if len(message) <= limit else message[: limit - 1] + "…"


def describe_json(value: Any) -> str:
    if isinstance(value, dict):
        return f"a JSON object with {len(value)} key{'s' * (len(value) != 1)}"
    if isinstance(value, list):
        return f"a JSON array of {len(value)} item{'s' * (len(value) != 1)}"
    return f"a JSON {type(value).__name__}"


def check_json(text: str, schema: dict[str, Any] | None = None) -> CheckResult:
    found = find_json(text)
    if not found.found:
        return CheckResult(False, "no valid JSON", [found.error])
    if schema is not None:
        errors = schema_errors(found.value, schema)
    elif not isinstance(found.value, dict | list):
        errors = [f"expected a JSON object or array, found {describe_json(found.value)}"]
    else:
        errors = []
    return CheckResult(not errors, describe_json(found.value), errors, found.value)


# -- code blocks -----------------------------------------------------------------------


def find_code_blocks(text: str) -> list[CodeBlock]:
    """Fenced code blocks as CommonMark reads them (a fence inside an indented block or
    a longer fence is not a fence), with their language tag and whether they close."""
    if "```" not in text and "~~~" not in text:
        return []
    lines = text.splitlines()
    blocks = []
    for token in _markdown().parse(text):
        if token.type != "fence" or token.map is None:
            continue
        start, end = token.map
        closing = lines[end - 1].strip() if end - 1 < len(lines) and end - start > 1 else ""
        closed = closing.startswith(token.markup) and set(closing) <= set(token.markup[0])
        language = token.info.strip().split(maxsplit=1)[0].lower() if token.info.strip() else ""
        blocks.append(CodeBlock(language, token.content, start + 1, closed))
    return blocks


def syntax_error(block: CodeBlock) -> str | None:
    """A cheap, safe syntax check for languages that have one (never runs the code)."""
    if block.language in ("python", "py", "python3"):
        try:
            ast.parse(block.code)
        except SyntaxError as exc:
            return f"Python syntax error at line {exc.lineno}: {exc.msg}"
        except (ValueError, RecursionError, MemoryError) as exc:
            return f"Python code cannot be parsed: {type(exc).__name__}"
    elif block.language == "json":
        found = _loads(block.code.strip())
        if not found.found:
            return found.error
    return None


def check_code(text: str, language: str | None = None) -> CheckResult:
    blocks = find_code_blocks(text)
    if not blocks:
        return CheckResult(False, "no code block", ["no fenced code block (```) in the reply"])
    errors = []
    for block in blocks:
        where = f"code block at line {block.line}"
        if not block.closed:
            errors.append(f"{where} is not closed with ```")
        if problem := syntax_error(block):
            errors.append(f"{where}: {problem}")
    if language and not any(b.language == language.lower() for b in blocks):
        errors.append(f"no code block tagged {language}")
    langs = ", ".join(b.language or "untagged" for b in blocks)
    found = f"{len(blocks)} code block{'s' * (len(blocks) != 1)} ({langs})"
    return CheckResult(not errors, found, errors[:MAX_ERRORS], blocks)


# -- lists -----------------------------------------------------------------------------


def find_list(text: str) -> list[str]:
    """The items of the first numbered or bulleted list: one entry per item, wrapped
    lines joined, nested lists folded into their parent item."""
    tokens = _markdown().parse(text)
    items: list[str] = []
    depth = 0
    current: list[str] = []
    for token in tokens:
        if token.type in ("bullet_list_open", "ordered_list_open"):
            depth += 1
        elif token.type in ("bullet_list_close", "ordered_list_close"):
            depth -= 1
            if depth == 0:
                break
        elif token.type == "list_item_open" and depth == 1:
            current = []
        elif token.type == "list_item_close" and depth == 1:
            items.append(" ".join(current).strip())
        elif token.type == "inline" and depth >= 1:
            current.append(" ".join(token.content.split()))
    return items


def check_list(text: str) -> CheckResult:
    items = find_list(text)
    if not items:
        return CheckResult(False, "no list",
                           ["no numbered (1.) or bulleted (-) list in the reply"])
    empty = [i + 1 for i, item in enumerate(items) if not item]
    errors = [f"list item {n} is empty" for n in empty][:MAX_ERRORS]
    return CheckResult(not errors, f"a list of {len(items)} item{'s' * (len(items) != 1)}",
                       errors, items)


# -- one entry point -------------------------------------------------------------------


def check_output(text: str, spec: OutputSpec, *, cut_off_at: int | None = None,
                 cut_by: str = "its token limit") -> CheckResult:
    """Check ``text`` against ``spec``. Never raises: an internal failure is reported as
    a failed check naming it.

    ``cut_off_at``: the reply stopped at this many tokens because of ``cut_by``, before
    it ended by itself. Such a reply never passes, whatever its text holds: a cut-off
    reply may look complete (a value closed by a repair, an inner object, a list missing
    its last items) while it is not what the model meant to say."""
    try:
        if spec.format == "json":
            result = check_json(text, spec.json_schema)
        elif spec.format == "code":
            result = check_code(text, spec.language)
        else:
            result = check_list(text)
    except Exception as exc:  # a checker bug must not lose the reply
        result = CheckResult(False, "unchecked", [f"the checker failed: {type(exc).__name__}"])
    if cut_off_at is None:
        return result
    cut = f"cut off at {cut_off_at} tokens: the reply reached {cut_by} before it ended"
    return CheckResult(False, result.found, [cut, *result.errors][:MAX_ERRORS],
                       cut_off_at=cut_off_at)
