"""What the model still has of each message, from the engine's ``context`` event: in the
cache, partly or wholly evicted (by which eviction), restored from a saved state, cut to
fit. Pure functions of the event and the stored path, for the chat pane's marks and the
context map screen."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from engine.events import ContextMap
from engine.store import MessageRow
from tui.safe_text import one_line

REASONS = {"prompt": "a prompt eviction", "generation": "an eviction while replying",
           "earlier": "an earlier eviction"}
"""How each eviction reason reads after ``by``."""

Range = tuple[int, int]


def in_context(row: MessageRow) -> bool:
    """Whether the model is sent this stored message (as ``ChatSession.history`` decides:
    a prompt that failed stays out, a reply counts once it has text)."""
    if row.role == "user":
        return row.status != "error"
    return row.role == "assistant" and bool(row.content)


def _overlap(a: Range, b: Range) -> int:
    return max(0, min(a[1], b[1]) - max(a[0], b[0]))


@dataclass(frozen=True)
class MessageContext:
    """One message's tokens and where they are."""

    message_id: int | None
    """None for the system prompt, which the store does not keep."""
    role: str
    start: int
    end: int
    cached: int
    """Tokens in the cache now."""
    evicted: dict[str, int] = field(default_factory=dict)
    """Tokens gone, by the reason of the eviction that took them."""
    restored: int = 0
    """Tokens this turn restored from a saved state (still in the cache)."""
    cut: int = 0
    """Tokens of this message cut to fit before it was ever read."""
    preview: str = ""

    @property
    def tokens(self) -> int:
        return self.end - self.start

    @property
    def evicted_tokens(self) -> int:
        return sum(self.evicted.values())

    @property
    def state(self) -> str:
        """``in cache``, ``partly evicted`` or ``evicted``."""
        gone = self.evicted_tokens
        if not gone:
            return "in cache"
        return "evicted" if gone >= self.tokens else "partly evicted"

    def describe(self) -> str:
        """One line: the state, what took the tokens, what was restored or cut."""
        gone = self.evicted_tokens
        by = " and ".join(REASONS.get(r, r) for r in self.evicted)
        if not gone:
            text = f"in the cache ({self.tokens} tokens)"
        elif gone >= self.tokens:
            text = f"evicted: all {self.tokens} tokens, by {by}"
        else:
            text = f"partly evicted: {gone} of {self.tokens} tokens, by {by}"
        if self.cut:
            text += f"; its first {self.cut} tokens were cut to fit"
        if self.restored:
            text += f"; {self.restored} restored from a saved state"
        return text


def message_contexts(event: ContextMap, path: Sequence[MessageRow],
                     reply_id: int | None) -> list[MessageContext]:
    """Each span of ``event`` with its stored message: the last span is the reply
    ``reply_id``; the others are the messages of ``path`` the model was sent, matched
    from the end (a system prompt comes first and has no row)."""
    rows: list[MessageRow | None] = [r for r in path if in_context(r) and r.id != reply_id]
    spans = event.spans[:-1]
    rows = [None] * max(0, len(spans) - len(rows)) + rows[max(0, len(rows) - len(spans)):]
    paired = list(zip(rows, spans, strict=True))
    reply = event.spans[-1]
    found = [_measure(event, row.id if row else None, row, span) for row, span in paired]
    found.append(_measure(event, reply_id, None, reply))
    last_user = max((i for i, c in enumerate(found) if c.role == "user"), default=-1)
    if event.cut and last_user >= 0:
        found[last_user] = _with_cut(found[last_user], event.cut)
    return found


def _measure(event: ContextMap, mid: int | None, row: MessageRow | None,
             span: tuple[str, int, int]) -> MessageContext:
    role, start, end = span
    evicted: dict[str, int] = {}
    for s, e, reason in event.evicted:
        if gone := _overlap((start, end), (s, e)):
            evicted[reason] = evicted.get(reason, 0) + gone
    cached = _overlap((start, end), (0, event.cached_end)) - sum(evicted.values())
    restored = sum(_overlap((start, end), r) for r in event.restored)
    preview = one_line(row.content)[:60] if row is not None else ""
    return MessageContext(mid, role, start, end, max(0, cached), evicted,
                          min(restored, max(0, cached)), preview=preview)


def _with_cut(found: MessageContext, cut: int) -> MessageContext:
    return MessageContext(found.message_id, found.role, found.start, found.end,
                          found.cached, found.evicted, found.restored, cut, found.preview)


def context_summary(event: ContextMap, n_ctx: int | None) -> str:
    """The map's headline: tokens, the kept prefix, evictions, restored cells."""
    total = event.spans[-1][2] if event.spans else 0
    gone = sum(e - s for s, e, _ in event.evicted)
    restored = sum(e - s for s, e in event.restored)
    parts = [f"{total} tokens in the conversation",
             f"{total - gone} in the model's context" + (f" of {n_ctx}" if n_ctx else ""),
             f"{event.n_keep} kept at the start"]
    if event.evicted:
        parts.append(f"{gone} evicted in {len(event.evicted)} span"
                     f"{'s' if len(event.evicted) > 1 else ''}")
    if restored:
        parts.append(f"{restored} restored from a saved state")
    return " · ".join(parts)
