"""Why the last message went where it went: the router's decision in full."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from engine.events import RouteDecision


def route_lines(route: RouteDecision | None) -> str:
    if route is None:
        return "No message has been routed yet."
    lines = [f"route: {route.route} ({route.source}, confidence {route.confidence:.2f})",
             f"reason: {route.reason}",
             f"template: {route.template_source} · output {route.output}",
             f"prompt: {route.prompt_tokens} tokens ({route.token_count}) of a "
             f"{route.prompt_budget}-token budget, n_ctx {route.n_ctx}",
             f"reply: reserve {route.reply_reserve}, KV reserved {route.kv_reserved}, "
             f"max_tokens {route.max_tokens}, temperature {route.temperature}",
             f"decided in {route.route_ms:.1f} ms"
             + (f" (model fallback {route.fallback_ms:.1f} ms)"
                if route.fallback_ms is not None else ""),
             "signals:"]
    lines += [f"  {s}" for s in route.signals] or ["  (none)"]
    return "\n".join(lines)


class RouteDetailScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,f5,q", "dismiss", "Close")]

    def __init__(self, route: RouteDecision | None) -> None:
        super().__init__(classes="dialog")
        self.route = route

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog-box"):
            yield Static(route_lines(self.route), id="route-detail", markup=False)
