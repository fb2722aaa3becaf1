"""One line at the bottom: model, backend, state, speed, context used."""

from __future__ import annotations

from textual.reactive import reactive
from textual.widgets import Static


class StatusLine(Static):
    model_name: reactive[str] = reactive("")
    backend: reactive[str] = reactive("")
    state: reactive[str] = reactive("loading model…")
    tokens_per_s: reactive[float] = reactive(0.0)
    ctx_used: reactive[int] = reactive(0)
    ctx_total: reactive[int] = reactive(0)
    evicted: reactive[int] = reactive(0)
    """Tokens of this conversation evicted from the KV cache so far."""

    def render(self) -> str:
        parts = [self.model_name or "(no model)"]
        if self.backend:
            parts.append(self.backend)
        parts.append(self.state)
        if self.tokens_per_s:
            parts.append(f"{self.tokens_per_s:.1f} tok/s")
        if self.ctx_total:
            pct = 100 * self.ctx_used / self.ctx_total
            parts.append(f"ctx {self.ctx_used}/{self.ctx_total} ({pct:.0f}%)")
        if self.evicted:
            parts.append(f"{self.evicted} evicted")
        return "  │  ".join(parts)
