"""What a structured reply must be, and the grammar that makes anything else impossible.

An :class:`OutputSpec` travels from the route's template (or ``--format``/``--schema``)
to the output checker, and, for the retry ladder's strictest step, into the backend:
the local engine compiles it to a llama.cpp GBNF grammar (:func:`gbnf_for`); an HTTP
backend sends the schema as ``response_format`` or the same GBNF as llama-server's
``grammar`` field.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

StructuredFormat = Literal["json", "code", "list"]


class OutputSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    format: StructuredFormat
    """json: one JSON value; code: at least one fenced code block; list: a numbered or
    bulleted list."""
    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    """For json: a JSON Schema the value must validate against (draft 2020-12)."""
    language: str | None = None
    """For code: the fence's language tag that is expected (python, json, ...)."""

    def describe(self) -> str:
        """A short phrase for prompts and logs: ``JSON matching the schema``, ..."""
        if self.format == "json":
            return "JSON matching the schema" if self.json_schema else "JSON"
        if self.format == "code":
            return f"a fenced {self.language} code block" if self.language \
                else "a fenced code block"
        return "a list"


class RetryPolicy(BaseModel):
    """What the retry ladder does when a reply does not match its spec (a route
    template's ``[retry]`` table)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True)

    max_attempts: int = Field(0, ge=0, le=5)
    """Extra attempts after a malformed reply; 0 accepts the first."""
    stricter_prompt: bool = True
    """Retry with a prompt that restates the expected format."""
    grammar_fallback: bool = False
    """As the last attempt, constrain decoding with a grammar (from the JSON schema, or
    a generic JSON, code-block or list grammar) that cannot produce malformed output."""
    repair: bool = True
    """For JSON: before generating again, try repairing trivially broken JSON
    (trailing commas, quotes, a value cut off at the end); costs no generation."""


# A JSON object or array when no schema says otherwise. Whitespace
# is bounded so a constrained model cannot spin forever on blank lines.
_JSON_GBNF = r"""
root   ::= ws ( object | array ) ws
value  ::= object | array | string | number | "true" | "false" | "null"
object ::= "{" ws ( string ws ":" ws value ( ws "," ws string ws ":" ws value )* )? ws "}"
array  ::= "[" ws ( value ( ws "," ws value )* )? ws "]"
string ::= "\"" ( [^"\\\x7F\x00-\x1F] | "\\" ( ["\\/bfnrt] | "u" [0-9a-fA-F]{4} ) )* "\""
number ::= "-"? ( "0" | [1-9] [0-9]{0,15} ) ( "." [0-9]{1,16} )? ( [eE] [-+]? [0-9]{1,4} )?
ws     ::= [ \t\n]{0,8}
"""

# A fenced block: an opening fence with a language tag, lines that never start a fence,
# and the closing fence. Text after it is not allowed, so the model ends there.
_CODE_GBNF = r"""
root  ::= "```" lang "\n" line{1,400} "```" "\n"?
lang  ::= LANG
line  ::= ( [^`\n] [^\n]{0,300} )? "\n"
"""

# One item per line, each introduced by "- " or "N. " and holding more than blanks (an
# item of spaces is an empty item to a Markdown reader).
_LIST_GBNF = r"""
root  ::= item{1,50}
item  ::= ( "- " | [1-9] [0-9]? ". " ) [^ \t\n] [^\n]{0,399} "\n"
"""


_LOOSE_CHAR = 'char ::= [^"\\\\] |'
_STRICT_CHAR = 'char ::= [^"\\\\\\x7F\\x00-\\x1F] |'


def gbnf_for(spec: OutputSpec) -> str:
    """The GBNF grammar whose every sentence passes :mod:`engine.structured.checks` for
    ``spec``. ValueError when a schema uses features the converter cannot express."""
    if spec.format == "json":
        if spec.json_schema is None:
            return _JSON_GBNF
        from llama_cpp.llama_grammar import json_schema_to_gbnf

        try:
            grammar = json_schema_to_gbnf(json.dumps(spec.json_schema))
        except Exception as exc:  # the converter raises bare Exceptions/KeyErrors
            raise ValueError(f"the schema cannot be turned into a grammar: {exc}") from None
        # The converter's string character allows raw control characters, which JSON
        # forbids inside strings (a newline there makes the value unparseable).
        return grammar.replace(_LOOSE_CHAR, _STRICT_CHAR)
    if spec.format == "code":
        lang = json.dumps(spec.language) if spec.language else "[a-z0-9+#-]{1,12}"
        return _CODE_GBNF.replace("LANG", lang)
    return _LIST_GBNF
