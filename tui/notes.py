"""One-line summaries of engine events, as the chat pane and status line print them."""

from __future__ import annotations

from collections.abc import Sequence

from engine.events import Done, RouteDecision


def route_note(route: RouteDecision) -> str:
    """``route code 0.67`` (or ``route qa (chosen)`` for an override)."""
    how = "chosen" if route.source == "override" else f"{route.confidence:.2f}"
    return f"route {route.route} {how}"


def strategy_name(strategy: str) -> str:
    return strategy.replace("_", " ")


def retry_note(attempts: int, ok: bool | None, strategies: Sequence[str]) -> str:
    """``retried 2× (repair, stricter prompt)`` or ``failed after 3 attempts``; empty
    for a reply that took one attempt and passed (or was never checked)."""
    if ok is False:
        return f"failed after {attempts} attempt{'s' if attempts > 1 else ''}"
    if attempts > 1:
        names = ", ".join(strategy_name(s) for s in strategies) or "?"
        return f"retried {attempts - 1}× ({names})"
    return ""


def done_note(done: Done, strategies: Sequence[str] = ()) -> str:
    approx = "~" if done.token_count == "estimate" else ""
    parts = [f"{approx}{done.completion_tokens} tokens", f"{done.tokens_per_s:.1f} tok/s",
             f"ttft {done.ttft_s * 1000:.0f} ms"]
    if done.evaluated_tokens is None and done.reused_tokens is None:
        parts.append("prompt cache unknown")  # a server that does not say
    else:
        parts.append(f"prompt {_count(done.evaluated_tokens)} new / "
                     f"{_count(done.reused_tokens)} cached")
    if done.drafted_tokens and done.accepted_tokens is not None:
        parts.append(f"spec {done.accepted_tokens / done.drafted_tokens:.0%} accepted")
    if done.evictions:
        parts.append(f"{done.evictions} evictions ({done.evicted_tokens} tokens)")
    retried = retry_note(done.attempts, done.output_ok, strategies)
    if retried:
        parts.append(retried)
    if done.finish_reason != "stop":
        parts.append(done.finish_reason.replace("_", " "))
    return " · ".join(parts)


def _count(value: int | None) -> str:
    return "?" if value is None else str(value)


def attempt_title(number: int, strategy: str, error: str) -> str:
    """The header of an earlier attempt, collapsed above the final one."""
    return f"attempt {number} · {strategy_name(strategy)} · malformed" + \
        (f": {error}" if error else "")
