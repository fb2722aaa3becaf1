"""Route a prompt to a template: a route, a confidence and the reasons.

The decision is a weighted vote of cheap signals (see ``route_signals``): code fences
and code-like lines, a Pygments language sniff, programming words, summarize verbs
at the start or end of the prompt, question forms, greetings and creative requests,
the route of the turn before, and the keywords of a user's own templates. ``chat``,
the general fallback, starts with a small prior so a prompt that fires nothing lands
there. Confidence is the winner's share against the runner-up plus a fixed doubt mass,
so a lone weak signal is never reported as certain.

Deterministic (no randomness, no clock in the decision) and under a millisecond for
ordinary prompts; see benchmarks/route_latency.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

from engine.routing.signals import (
    CODE_SCAN_CHARS,
    HEAD_CHARS,
    TAIL_CHARS,
    Signal,
    chat_signals,
    code_signals,
    keyword_hit,
    question_signals,
    summarize_signals,
    unreadable_share,
    words_of,
)
from engine.routing.templates import BUILTIN_ROUTES, FALLBACK_ROUTE, TemplateSet

CHAT_PRIOR = 0.75
"""Weight chat gets before any signal: the fallback wins when nothing else fires."""
DOUBT = 1.0
"""Mass added to the denominator of the confidence: one weak signal is not certainty."""
FOLLOW_UP_WEIGHT = 2.0
FOLLOW_UP_MAX_CHARS = 120
KEYWORD_WEIGHT = 5.0
UNREADABLE_SHARE = 0.1
"""Prompts with more control characters or U+FFFD than this are junk: chat."""
_ORDER = {name: i for i, name in enumerate(BUILTIN_ROUTES)}


@dataclass(frozen=True)
class RouteChoice:
    """A routing decision, before any budget is attached."""

    route: str
    confidence: float
    reason: str
    signals: tuple[str, ...] = ()
    """Every signal that fired, as ``route: label (+weight)``."""
    source: str = "signals"
    """signals, override (``--route`` / ``/route``), or model (the fallback)."""
    scores: dict[str, float] = field(default_factory=dict)
    elapsed_ms: float = 0.0





class Router:
    def __init__(self, templates: TemplateSet) -> None:
        self.templates = templates
        self._user_keywords = [(t.name, t.keywords) for t in templates.templates.values()
                               if t.keywords]

    def override(self, name: str) -> RouteChoice:
        """The decision for a route the user named (``--route`` / ``/route``)."""
        if name not in self.templates.templates:
            raise KeyError(name)
        return RouteChoice(route=name, confidence=1.0, reason=f"chosen by the user ({name})",
                       source="override", scores={name: 1.0})

    def route(self, text: str, previous: str | None = None) -> RouteChoice:
        """Route ``text``; ``previous`` is the route of the conversation's last turn."""
        started = time.perf_counter()
        signals = self.signals(text, previous)
        scores = {name: 0.0 for name in self.templates.templates}
        scores[FALLBACK_ROUTE] = scores.get(FALLBACK_ROUTE, 0.0) + CHAT_PRIOR
        for s in signals:
            if s.route in scores:
                scores[s.route] += s.weight
        # Highest score; ties go to the built-in order, then the name: deterministic.
        ranked = sorted(scores, key=lambda r: (-scores[r], _ORDER.get(r, 99), r))
        winner, runner_up = ranked[0], ranked[1] if len(ranked) > 1 else None
        second = scores[runner_up] if runner_up else 0.0
        confidence = scores[winner] / (scores[winner] + second + DOUBT)
        elapsed = (time.perf_counter() - started) * 1000
        return RouteChoice(route=winner, confidence=round(confidence, 3),
                       reason=_reason(winner, signals),
                       signals=tuple(f"{s.route}: {s.label} (+{s.weight:g})" for s in signals),
                       scores={k: round(v, 3) for k, v in scores.items() if v},
                       elapsed_ms=elapsed)

    def signals(self, text: str, previous: str | None = None) -> list[Signal]:
        head = text[:HEAD_CHARS].strip()
        if unreadable_share(text[:CODE_SCAN_CHARS]) > UNREADABLE_SHARE:
            return [Signal(FALLBACK_ROUTE, 5.0, "not readable text")]
        if not head:
            return [Signal(FALLBACK_ROUTE, 1.0, "empty prompt")]
        tail = text[-TAIL_CHARS:].strip() if len(text) > HEAD_CHARS else ""
        last = (tail or head).rstrip()
        last_sentence = last.splitlines()[-1] if last else ""
        words = words_of(text[:CODE_SCAN_CHARS])
        signals = [
            *code_signals(text, words, head),
            *summarize_signals(text, head, tail, last_sentence.endswith("?")),
            *question_signals(head, last_sentence),
            *chat_signals(head, len(head.split())),
        ]
        lowered = (head + "\n" + tail).lower()
        for name, keywords in self._user_keywords:
            if hit := keyword_hit(keywords, lowered):
                signals.append(Signal(name, KEYWORD_WEIGHT, f"keyword {hit!r} of template "
                                                            f"{name}"))
        if any(s.leading for s in signals):
            # "Summarize this code": the code is what to summarize, not the task.
            signals = [replace(s, weight=s.weight / 2, label=s.label + " (the material)")
                       if s.material and s.route == "code" else s for s in signals]
        strongest = max((s.weight for s in signals), default=0.0)
        if (previous and previous in self.templates.templates and previous != FALLBACK_ROUTE
                and len(text) <= FOLLOW_UP_MAX_CHARS and strongest < 2.5):
            signals.append(Signal(previous, FOLLOW_UP_WEIGHT,
                                  f"short follow-up to a {previous} turn"))
        return signals


def _reason(winner: str, signals: list[Signal]) -> str:
    """``code fence (Python); asks to write code`` (+ what else fired)."""
    mine = [s.label for s in sorted(signals, key=lambda s: -s.weight) if s.route == winner]
    others = [f"{s.route}: {s.label}" for s in signals if s.route != winner]
    if mine:
        reason = "; ".join(mine)
    elif winner == FALLBACK_ROUTE:
        reason = "no signal for another route (general chat)"
    else:
        reason = "highest score"
    if others:
        reason += " — also: " + "; ".join(others)
    return reason
