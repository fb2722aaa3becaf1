"""A chat template from a model file, rendered in Jinja's sandbox under limits.

The template is untrusted input: Jinja's ``ImmutableSandboxedEnvironment`` stops it
reaching Python's internals, and the hooks here stop it spending the machine. Every
loop, call, attribute, operator, filter, concatenation, captured block and output value
checks the deadline and the size of what it is about to build, before building it
(``template_limits.py``), so a template that loops for ever or builds a multi-gigabyte
string stops with a :class:`TemplateLimit` naming the limit, within about the time
limit, and never ends in a MemoryError. What a template may use is what real ones use,
as transformers and llama.cpp provide it: ``raise_exception``, ``strftime_now``,
``{% break %}`` and ``{% continue %}``, ``{% generation %}``, and a ``tojson`` that keeps
non-ASCII text.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import update_wrapper
from typing import Any, ClassVar

from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.parser import Parser
from jinja2.runtime import Context, LoopContext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer

from engine.model.template_limits import (
    ACTIVE,
    DEFAULT_LIMITS,
    FILTER_GROWTH,
    FILTER_SIZES,
    STR_METHOD_SIZES,
    Limits,
    RenderBudget,
    TemplateLimit,
    TemplateProblem,
    TemplateRefused,
    active_budget,
    binop_size,
    cap,
    check_ints,
    check_size,
    join_size,
    made,
    one_line,
    span,
    tick,
)


def _guard_str_method(method: Any, size: Callable[..., int]) -> Callable[..., Any]:
    owner = method.__self__ if hasattr(method, "__self__") else method.__wrapped__.__self__

    def guarded(*args: Any, **kwargs: Any) -> Any:
        tick()
        check_ints(args, kwargs)
        if method.__name__ == "join":
            args = (list(args[0]),) if args else args
            check_size(join_size(owner, *args), "a join")
        else:
            check_size(size(owner, *args, **kwargs), f"str.{method.__name__}")
        result = method(*args, **kwargs)
        made(result)
        return result

    return update_wrapper(guarded, method)


def _guard_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    # A filter marked pass_context / pass_environment gets that first, then the value.
    skip = 1 if hasattr(func, "jinja_pass_arg") else 0
    size = FILTER_SIZES.get(name)
    growth = FILTER_GROWTH.get(name)

    def guarded(*args: Any, **kwargs: Any) -> Any:
        tick()
        check_ints(args[skip + 1:], kwargs)
        value, rest = args[skip], args[skip + 1:]
        if name == "join":
            value = list(value)
            args = (*args[:skip], value, *rest)
            sep = rest[0] if rest else kwargs.get("d", "")
            check_size(join_size(str(sep), value), "a join")
        elif size is not None:
            check_size(size(value, *rest, **kwargs), f"the {name} filter's output")
        elif growth is not None:
            check_size(span(value) * growth, f"the {name} filter's output")
        result = func(*args, **kwargs)
        made(result)
        return result

    return update_wrapper(guarded, func)


# -- what templates are given ------------------------------------------------------

def _raise_exception(message: Any = "") -> None:
    text = " ".join(str(message).split())[:200]
    raise TemplateRefused(f"the template refused the conversation: {text}")


def _strftime_now(fmt: str) -> str:
    if not isinstance(fmt, str) or len(fmt) > 256:
        raise TemplateLimit("strftime_now takes a format of at most 256 characters")
    return datetime.now().strftime(fmt)


def _range(*args: int) -> range:
    if not all(isinstance(a, int) for a in args):
        raise TypeError("range() takes integers")
    items = range(*args)
    try:
        n = len(items)
    except OverflowError:
        n = DEFAULT_LIMITS.range_items + 1
    budget = active_budget()
    limit = (budget.limits if budget else DEFAULT_LIMITS).range_items
    if n > limit:
        raise TemplateLimit(f"range() of {n} items (the limit is {limit})")
    return items


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | str | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    """transformers' ``tojson``: non-ASCII kept, indent as asked; built piece by piece
    so that a deep indent over a large value stops at the size limit."""
    if (indent if isinstance(indent, int) else len(indent or "")) > 64:
        raise TemplateLimit("tojson's indent is past 64")
    encoder = json.JSONEncoder(ensure_ascii=ensure_ascii, indent=indent,
                               separators=separators, sort_keys=sort_keys)
    parts, chars, most = [], 0, cap()
    for chunk in encoder.iterencode(value):
        chars += len(chunk)
        if chars > most:
            raise TemplateLimit(f"tojson's output is past {most} characters")
        if len(parts) % 256 == 0:
            tick()
        parts.append(chunk)
    return "".join(parts)


class _GuardedIter:
    """What a ``{% for %}`` walks: the deadline is checked at every item."""

    def __init__(self, iterable: Any) -> None:
        self.iterable = iterable

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable:
            tick()
            yield item

    def __len__(self) -> int:
        return len(self.iterable)


class _GenerationTag(Extension):
    """``{% generation %}...{% endgeneration %}`` (transformers marks the assistant's
    tokens with it): the body, as written."""

    tags: ClassVar[set[str]] = {"generation"}

    def parse(self, parser: Parser) -> list[nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


class _Hooks(NodeTransformer):
    """Route every for-loop's iterable and every ``~`` through the checks."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = nodes.Filter(node.iter, "_kv_iter", [], [], None, None,
                                 lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return nodes.Filter(nodes.List(node.nodes, lineno=node.lineno), "_kv_concat", [], [],
                            None, None, lineno=node.lineno)


def _concat(parts: Any) -> str:
    parts = [str(p) for p in parts]
    check_size(sum(map(len, parts)), "a joined block")
    text = "".join(parts)
    made(text)
    return text


def _concat_values(values: list[Any]) -> str:
    tick()
    check_size(sum(span(v) for v in values), "a ~ concatenation")
    return _concat(values)


def _finalize(value: Any) -> Any:
    """Every ``{{ }}`` value passes here before ``str()``."""
    tick()
    made(value)
    return value


class _Environment(ImmutableSandboxedEnvironment):
    """The immutable sandbox with every hook of this module in place."""

    intercepted_binops = frozenset({"+", "-", "*", "/", "//", "%", "**"})

    def __init__(self, limits: Limits) -> None:
        super().__init__(trim_blocks=True, lstrip_blocks=True, finalize=_finalize,
                         extensions=[loopcontrols, _GenerationTag])
        self.limits = limits
        self.concat = _concat  # type: ignore[assignment]  # captured blocks, macro bodies
        self.filters["tojson"] = _tojson
        self.filters = {name: _guard_filter(name, f) for name, f in self.filters.items()}
        self.filters["_kv_iter"] = _GuardedIter
        self.filters["_kv_concat"] = _concat_values
        self.globals.pop("lipsum", None)
        self.globals.update(range=_range, raise_exception=_raise_exception,
                            strftime_now=_strftime_now)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        tick()
        check_size(binop_size(operator, left, right, self.limits), f"a {operator!r}")
        result = super().call_binop(context, operator, left, right)
        made(result)
        return result

    def getattr(self, obj: Any, attribute: str) -> Any:
        tick()
        return self._guard_method(super().getattr(obj, attribute))

    def getitem(self, obj: Any, argument: Any) -> Any:
        tick()
        value = self._guard_method(super().getitem(obj, argument))
        if isinstance(argument, slice):
            made(value)  # a slice is a copy
        return value

    @staticmethod
    def _guard_method(value: Any) -> Any:
        name = getattr(value, "__name__", None)
        if name == "join" or name in STR_METHOD_SIZES:
            owner = getattr(value, "__self__", None)
            if owner is None and hasattr(value, "__wrapped__"):  # Jinja's str.format wrapper
                owner = getattr(value.__wrapped__, "__self__", None)
            if isinstance(owner, str):
                return _guard_str_method(value, STR_METHOD_SIZES.get(name, len))
        return value

    def call(__self, __context: Context, __obj: Any, *args: Any,
             **kwargs: Any) -> Any:
        tick()
        if isinstance(__obj, LoopContext) and args:  # a recursive loop's next level
            args = (_GuardedIter(args[0]), *args[1:])
        result = super().call(__context, __obj, *args, **kwargs)
        made(result)
        return result


@dataclass(frozen=True)
class CompiledTemplate:
    """A parsed template, ready to render under its limits."""

    template: Any
    limits: Limits

    def render(self, variables: dict[str, Any], input_chars: int = 0) -> str:
        """The output for ``variables``. Raises TemplateProblem (a limit, a refusal)
        or whatever else the template raised."""
        limits = self.limits
        most = max(limits.output_chars, limits.input_factor * input_chars)
        budget = RenderBudget(limits, most)
        outer, ACTIVE.budget = active_budget(), budget
        try:
            parts, chars = [], 0
            for chunk in self.template.generate(**variables):
                chars += len(chunk)
                if chars > most:
                    raise TemplateLimit(f"its output passed {most} characters")
                budget.tick()
                parts.append(chunk)
            return "".join(parts)
        finally:
            ACTIVE.budget = outer


def compile_template(source: str, limits: Limits = DEFAULT_LIMITS) -> CompiledTemplate:
    """Parse and compile ``source``. Raises TemplateProblem with the reason."""
    if len(source) > limits.source_chars:
        raise TemplateLimit(f"the template is {len(source)} characters (the limit is "
                            f"{limits.source_chars})")
    env = _Environment(limits)
    try:
        tree = _Hooks().visit(env.parse(source))
        return CompiledTemplate(env.from_string(tree), limits)
    except TemplateProblem:
        raise
    except Exception as exc:  # a syntax error, or a parser driven past its recursion limit
        raise TemplateProblem(f"it does not parse: {one_line(exc)}") from None
