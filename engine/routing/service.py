"""From a prompt to everything its route decides: template, sampling, KV reserve.

Shared by the chat session (every reply) and ``kvchat route`` (the decision alone,
no model needed). The route's template supplies the instructions sent with the turn,
sampling overrides (except settings the user pinned on the command line) and the
context budget; the reply reserve becomes the ``reserve`` passed to the engine.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from engine.api import ModelAnswer
from engine.config import KvchatConfig, RouterConfig, SamplingConfig, default_config_path
from engine.errors import KvchatError
from engine.events import RouteDecision
from engine.routing.router import RouteChoice, Router
from engine.routing.templates import (
    FALLBACK_ROUTE,
    RouteTemplate,
    TemplateSet,
    load_templates,
    user_templates_dir,
    with_instructions,
)
from engine.routing.token_count import TokenCounter

DEFAULT_N_CTX = 4096

AskModel = Callable[[str, list[str], dict[str, str]], Awaitable[ModelAnswer | None]]


class RouteError(KvchatError):
    """An unknown route name in ``--route`` or ``/route``."""

    code = "unknown_route"
    usage = True


@dataclass(frozen=True)
class RoutedTurn:
    """A decided route and what it changes for the reply."""

    event: RouteDecision
    template: RouteTemplate
    sampling: SamplingConfig
    reserve: int
    """The template's reply reserve in tokens, for ``ChatEngine.chat(reserve=...)``."""
    model_text: str
    """The user turn as the model sees it (instructions, then the message)."""


class RouteService:
    """Routes prompts with one template set; owns no model and no global state."""

    def __init__(self, templates: TemplateSet, config: RouterConfig | None = None) -> None:
        self.templates = templates
        self.config = config or RouterConfig()
        self.router = Router(templates)
        self.counter = TokenCounter(tiktoken_source=self.config.tiktoken_file
                                    or "cl100k_base")

    @classmethod
    def from_config(cls, config: KvchatConfig, config_path: Path | None = None,
                    ) -> RouteService:
        """Bundled templates plus the user's, from the ``templates/`` folder beside
        the config file."""
        folder = user_templates_dir(config_path or default_config_path())
        return cls(load_templates(folder), config.router)

    def check_route(self, name: str) -> str:
        if name not in self.templates.templates:
            raise RouteError(f"unknown route {name!r} (choose from "
                             f"{', '.join(self.templates.names)})")
        return name

    async def decide(self, text: str, *, base: SamplingConfig, n_ctx: int,
                     previous: str | None = None, override: str | None = None,
                     pinned: Iterable[str] = (),
                     exact_count: Callable[[str], int | None] | None = None,
                     ask_model: AskModel | None = None) -> RoutedTurn:
        started = time.perf_counter()
        fallback_ms: float | None = None
        if override is not None:
            routing = self.router.override(self.check_route(override))
        elif not self.config.enabled:
            routing = RouteChoice(route=FALLBACK_ROUTE, confidence=1.0,
                              reason="routing is off (router.enabled = false)",
                              source="disabled")
        else:
            routing = self.router.route(text, previous)
            if (ask_model is not None and self.config.model_fallback
                    and routing.confidence < self.config.min_confidence):
                routing, fallback_ms = await self._ask(text, routing, ask_model)
        template = self.templates.get(routing.route)
        sampling = template.sampling.apply(base, pinned)
        model_text = with_instructions(text, template.instructions)
        exact = exact_count(model_text) if exact_count is not None else None
        count = (self.counter.count(model_text) if exact is None
                 else _Exact(exact))
        reserve = template.budget.reserve_tokens(n_ctx)
        event = RouteDecision(
            route=routing.route, confidence=routing.confidence, reason=routing.reason,
            source=routing.source, signals=list(routing.signals),  # type: ignore[arg-type]
            template_source=self.templates.sources.get(routing.route, "bundled"),
            output=template.output, n_ctx=n_ctx,
            prompt_budget=template.budget.prompt_tokens(n_ctx),
            prompt_tokens=count.tokens, token_count=count.method,
            reply_reserve=reserve,
            kv_reserved=max(0, min(reserve, sampling.max_tokens, n_ctx // 2)),
            max_tokens=sampling.max_tokens, temperature=sampling.temperature,
            route_ms=round((time.perf_counter() - started) * 1000, 3),
            fallback_ms=None if fallback_ms is None else round(fallback_ms, 1))
        return RoutedTurn(event, template, sampling, reserve, model_text)

    async def _ask(self, text: str, routing: RouteChoice, ask_model: AskModel,
                   ) -> tuple[RouteChoice, float | None]:
        names = self.templates.names
        descriptions = {n: self.templates.get(n).description for n in names}
        answer = await ask_model(text, names, descriptions)
        if answer is None:
            return routing, None
        reason = (f"the model answered {answer.route!r} (signals were unsure: "
                  f"{routing.route} at {routing.confidence:.2f}: {routing.reason})")
        return RouteChoice(route=answer.route, confidence=answer.confidence, reason=reason,
                       signals=routing.signals, source="model", scores=routing.scores,
                       ), answer.elapsed_ms


@dataclass(frozen=True)
class _Exact:
    tokens: int
    method: str = "exact"
