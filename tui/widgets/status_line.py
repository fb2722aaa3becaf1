"""One line at the bottom: model, backend, state, route, speed, speculation, context."""

from __future__ import annotations

from textual.content import Content
from textual.reactive import reactive
from textual.widgets import Static

from engine.events import RouteDecision, SpecStats
from tui.safe_text import one_line


class StatusLine(Static):
    model_name: reactive[str] = reactive("")
    backend: reactive[str] = reactive("")
    state: reactive[str] = reactive("loading model…")
    route: reactive[str] = reactive("")
    """``code 0.67`` for the last routed message; its reason is the tooltip."""
    next_route: reactive[str] = reactive("")
    """The route chosen for the next message, if one was."""
    tokens_per_s: reactive[float] = reactive(0.0)
    spec: reactive[str] = reactive("")
    ctx_used: reactive[int] = reactive(0)
    ctx_total: reactive[int] = reactive(0)
    evicted: reactive[int] = reactive(0)
    """Tokens of this conversation evicted from the KV cache so far."""
    batch: reactive[str] = reactive("")
    """While several replies decode at once: ``batch 3 decoding, 1 queued │ this 41.0 of
    118.2 tok/s``, in place of the last reply's speed."""

    def show_route(self, route: RouteDecision) -> None:
        how = "chosen" if route.source == "override" else f"{route.confidence:.2f}"
        self.route = f"{route.route} {how}"
        self.tooltip = Content(one_line(f"route {route.route}: {route.reason}"))

    def show_spec(self, spec: SpecStats) -> None:
        if not spec.active:
            self.spec = "spec off"
        else:
            self.spec = (f"spec {spec.acceptance:.0%} ({spec.running_acceptance:.0%} all) "
                         f"×{spec.speedup:.2f}")

    def render(self) -> Content:
        parts = [self.model_name or "(no model)"]
        if self.backend:
            parts.append(self.backend)
        parts.append(self.state)
        if self.next_route:
            parts.append(f"next: {self.next_route}")
        elif self.route:
            parts.append(f"route {self.route}")
        if self.batch:
            parts.append(self.batch)
        elif self.tokens_per_s:
            parts.append(f"{self.tokens_per_s:.1f} tok/s")
        if self.spec:
            parts.append(self.spec)
        if self.ctx_total:
            pct = 100 * self.ctx_used / self.ctx_total
            parts.append(f"ctx {self.ctx_used}/{self.ctx_total} ({pct:.0f}%)")
        if self.evicted:
            parts.append(f"{self.evicted} evicted")
        # Plain text, escaped: the model's name comes from its file or a server.
        return Content(one_line(" │ ".join(parts)))
