"""What a chat template may spend while it renders, and how big what it builds will be.

The hooks in ``chat_template.py`` ask here before they let a template build anything:
the deadline, the size of a value before it is made (a ``*``, a ``replace``, a
``center``, a join), and now and then the process's memory. The limits hold per
render, on the thread that renders (one render at a time per thread).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from jinja2 import TemplateError
from jinja2.utils import Namespace

from engine.model.memory.budget import process_rss


@dataclass(frozen=True)
class Limits:
    """What one render may spend."""

    seconds: float = 1.0
    output_chars: int = 4 << 20
    """The longest output, and the longest value built on the way; raised to
    ``input_factor`` times the conversation's length for a long conversation."""
    input_factor: int = 8
    memory_bytes: int = 256 << 20
    """How much the process may grow while the template renders."""
    source_chars: int = 256 << 10
    """The longest template accepted (real ones are a few kB to a few tens of kB)."""
    range_items: int = 100_000
    int_bits: int = 1 << 16


DEFAULT_LIMITS = Limits()
_MEMORY_CHECK_CHARS = 4 << 20
"""Characters the template may build between two reads of the process's memory."""


class TemplateProblem(Exception):
    """A template that cannot be used for this conversation; ``reason`` is one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TemplateLimit(TemplateProblem):
    """The template hit a limit: too slow, too large an output or value, too much memory."""


class RenderCancelled(Exception):
    """The reply the render was for was cancelled: the template is not at fault."""


class TemplateRefused(TemplateProblem):
    """The template called ``raise_exception``: it does not accept this conversation."""


def one_line(exc: BaseException) -> str:
    """A one-line reason for any exception a template raised."""
    if isinstance(exc, TemplateProblem):
        return exc.reason
    text = " ".join(str(exc).split()) or type(exc).__name__
    if not isinstance(exc, TemplateError):
        text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= 160 else text[:157] + "..."


class RenderBudget:
    """What is left of one render's limits."""

    def __init__(self, limits: Limits, cap: int) -> None:
        self.limits = limits
        self.cap = cap
        self.deadline = time.monotonic() + limits.seconds
        self.built = 0
        self.next_check = _MEMORY_CHECK_CHARS
        self.rss = process_rss()

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise TemplateLimit(f"it ran past the {self.limits.seconds:g} s limit")
        cancel: threading.Event | None = getattr(ACTIVE, "cancel", None)
        if cancel is not None and cancel.is_set():
            raise RenderCancelled

    def made(self, chars: int) -> None:
        """``chars`` more characters were built: now and then, look at the memory."""
        self.built += chars
        if self.built < self.next_check:
            return
        self.next_check = self.built + _MEMORY_CHECK_CHARS
        self.tick()
        rss = process_rss()
        if rss is not None and self.rss is not None \
                and rss - self.rss > self.limits.memory_bytes:
            raise TemplateLimit(f"it used more than {self.limits.memory_bytes >> 20} MiB")


ACTIVE = threading.local()


@contextmanager
def cancelled_by(cancel: threading.Event) -> Iterator[None]:
    """Renders on this thread while the block runs stop with RenderCancelled once
    ``cancel`` is set (checked where the deadline is)."""
    outer, ACTIVE.cancel = getattr(ACTIVE, "cancel", None), cancel
    try:
        yield
    finally:
        ACTIVE.cancel = outer


def active_budget() -> RenderBudget | None:
    """The render in progress on this thread; None while a template compiles (Jinja
    folds constant expressions then, through the same hooks)."""
    return getattr(ACTIVE, "budget", None)


def tick() -> None:
    if (budget := active_budget()) is not None:
        budget.tick()


def cap() -> int:
    budget = active_budget()
    return budget.cap if budget is not None else DEFAULT_LIMITS.output_chars


def check_size(chars: int, what: str) -> None:
    if chars > cap():
        raise TemplateLimit(f"{what} would be {chars} characters (the limit is {cap()})")


def made(value: Any) -> None:
    """Check and count a value the template just built."""
    if isinstance(value, str | list | tuple | dict):
        chars = span(value)
        check_size(chars, "a value")
        if (budget := active_budget()) is not None:
            budget.made(chars)


def span(value: Any, stop: int | None = None) -> int:
    """About how many characters ``str(value)`` takes; counting stops past ``stop``
    (a cyclic structure counts until then)."""
    if isinstance(value, str):
        return len(value)
    stop = cap() + 1 if stop is None else stop
    total, todo = 0, [value]
    while todo and total <= stop:
        item = todo.pop()
        if isinstance(item, str):
            total += len(item) + 2
        elif isinstance(item, list | tuple | set | frozenset):
            total += 2 + 2 * len(item)
            todo.extend(item)
        elif isinstance(item, dict):
            total += 2 + 4 * len(item)
            todo.extend(item.keys())
            todo.extend(item.values())
        elif isinstance(item, Namespace):
            total += 13
            todo.append(item._Namespace__attrs)  # type: ignore[attr-defined]
        elif isinstance(item, int):
            total += item.bit_length() // 3 + 2
        else:
            total += 32
    return total


def check_ints(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """An integer argument sizes what a filter or method builds (a width, a count)."""
    for arg in (*args, *kwargs.values()):
        if isinstance(arg, int) and abs(arg) > cap():
            raise TemplateLimit(f"an argument of {arg} is past the size limit ({cap()})")


_WIDTHS = re.compile(r"%(?:\([^)]*\))?[-+ #0]*(\d*)(?:\.(\d+))?"  # printf style
                     r"|:[^{}:]*?(\d+)(?:\.(\d+))?[^{}]*\}")  # str.format style


def format_size(fmt: str, args: Any) -> int:
    """An upper bound on ``fmt % args`` or ``fmt.format(...)``: widths and precisions
    written in the format string count in full."""
    widths = 0
    for match in _WIDTHS.finditer(fmt):
        for digits in match.groups():
            if digits and len(digits) > 9:
                raise TemplateLimit("a format width is past the size limit")
            widths += int(digits or 0)
    return len(fmt) + widths + span(args)


def binop_size(op: str, left: Any, right: Any, limits: Limits) -> int:
    """An upper bound on the characters ``left op right`` builds (0: nothing to fear)."""
    if op == "+" and isinstance(left, str) and isinstance(right, str):
        return len(left) + len(right)
    if op == "+" and isinstance(left, list | tuple) and isinstance(right, type(left)):
        return span(left) + span(right)
    if op == "*":
        seq, n = (left, right) if isinstance(right, int) else (right, left)
        if isinstance(seq, str) and isinstance(n, int):
            return len(seq) * max(n, 0)
        if isinstance(seq, list | tuple) and isinstance(n, int):
            return span(seq) * max(n, 0)
        if isinstance(left, int) and isinstance(right, int) \
                and left.bit_length() + right.bit_length() > limits.int_bits:
            raise TemplateLimit(f"a product past {limits.int_bits} bits")
    if op == "**" and isinstance(left, int) and isinstance(right, int) \
            and right > 0 and abs(left) > 1 and left.bit_length() * right > limits.int_bits:
        raise TemplateLimit(f"a power past {limits.int_bits} bits")
    if op == "%" and isinstance(left, str):
        check_ints(right if isinstance(right, tuple) else (right,), {})
        return format_size(left, right)
    return 0


# -- str methods and filters that can build far more than they are given -----------

def _replace_size(s: str, old: Any, new: Any, count: Any = -1) -> int:
    if not isinstance(old, str) or not isinstance(new, str):
        return len(s)
    hits = len(s) + 1 if old == "" else s.count(old)
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    return len(s) + hits * len(new)


def join_size(sep: str, items: list[Any]) -> int:
    return sum(span(x) for x in items) + len(sep) * len(items)


def _indent_size(s: str, width: Any = 4, *_: Any, **__: Any) -> int:
    pad = len(width) if isinstance(width, str) else width if isinstance(width, int) else 4
    return len(s) + (s.count("\n") + 1) * pad


def _wrap_size(s: str, width: Any = 79, break_long_words: Any = True,
               wrapstring: Any = None, break_on_hyphens: Any = True) -> int:
    wrap = wrapstring or "\n"
    lines = len(s) // max(int(width), 1) + s.count(" ") + s.count("\n") + 1
    return len(s) + lines * len(str(wrap))


def _translate_size(s: str, table: Any) -> int:
    longest = max((len(v) for v in table.values() if isinstance(v, str)), default=1) \
        if isinstance(table, dict) else 1
    return len(s) * max(longest, 1)


STR_METHOD_SIZES: dict[str, Callable[..., int]] = {
    "ljust": lambda s, w=0, *_: max(len(s), w),
    "rjust": lambda s, w=0, *_: max(len(s), w),
    "center": lambda s, w=0, *_: max(len(s), w),
    "zfill": lambda s, w=0: max(len(s), w),
    "expandtabs": lambda s, tabsize=8: len(s) + s.count("\t") * max(tabsize, 0),
    "replace": _replace_size,
    "translate": _translate_size,
    "format": lambda s, *a, **k: format_size(s, (a, k)),
    "format_map": lambda s, m: format_size(s, m),
}
FILTER_SIZES: dict[str, Callable[..., int]] = {
    "center": lambda s, width=80: max(len(str(s)), width),
    "indent": lambda s, *a, **k: _indent_size(str(s), *a, **k),
    "replace": lambda s, old, new, count=None: _replace_size(str(s), old, new,
                                                            -1 if count is None else count),
    "wordwrap": lambda s, *a, **k: _wrap_size(str(s), *a, **k),
    "format": lambda s, *a, **k: format_size(str(s), (a, k)),
    "truncate": lambda s, *a, **k: len(str(s)) + span((a, k)),
    "urlize": lambda s, *a, **k: len(str(s)) * (2 + span((a, k))),
}
FILTER_GROWTH = {"string": 1, "e": 6, "escape": 6, "forceescape": 6, "pprint": 4,
                 "urlencode": 3, "xmlattr": 6, "upper": 3, "lower": 3, "title": 3,
                 "capitalize": 3}
"""Filters that turn their input into text up to this many times its size."""
