"""``kvchat route``: how a prompt would be routed, without generating a reply.

No model is loaded unless the model fallback is asked for (``--model-fallback``);
token counts are then estimates, labelled as such in the output.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from typing import Any

from engine.config import KvchatConfig
from engine.events import RouteDecision
from engine.routing.service import RouteService
from tui.cli import EXIT_OK
from tui.cli.options import pinned_sampling, read_prompt, resolve_config
from tui.cli.startup import route_service
from tui.safe_text import json_text, visible


def add_route_parser(commands: Any, add_model_options: Callable[..., None]) -> None:
    route = commands.add_parser(
        "route", help="show how a prompt would be routed (no reply)",
        description="Route a prompt and print the decision: route, confidence, reason, "
                    "template and budget. No model is loaded unless --model-fallback.")
    route.add_argument("prompt", help="the prompt; '-' reads it from stdin")
    route.add_argument("--json", action="store_true", help="print the route event as JSON")
    route.add_argument("--route", metavar="NAME", dest="route_name",
                       help="force a route (as /route NAME does in the app)")
    route.add_argument("--previous", metavar="NAME",
                       help="the route of the turn before (a follow-up)")
    route.add_argument("--model-fallback", action="store_true",
                       help="load the model and ask it when the signals are unsure")
    add_model_options(route, suppress=True)


def run_route(args: argparse.Namespace) -> int:
    prompt = read_prompt(args.prompt)
    config = resolve_config(args)
    service = route_service(config, args, warn=True)
    if args.previous is not None:
        service.check_route(args.previous)
    if args.model_fallback:
        service.config.model_fallback = True
        event = asyncio.run(_with_model(service, prompt, args, config))
    else:
        event = asyncio.run(service.decide(
            prompt, base=config.sampling, n_ctx=config.model.n_ctx, previous=args.previous,
            override=args.route_name, pinned=pinned_sampling(args))).event
    if args.json:
        print(json_text(event.model_dump_json()))
    else:
        print(visible(describe(event)))
    return EXIT_OK


async def _with_model(service: RouteService, prompt: str, args: argparse.Namespace,
                      config: KvchatConfig) -> RouteDecision:
    from engine.backends.factory import make_local_engine

    # Always the local model, whatever [backend] says: a server cannot classify.
    engine = make_local_engine(config)
    try:
        info = await engine.start()
        routed = await service.decide(
            prompt, base=config.sampling, n_ctx=info.n_ctx, previous=args.previous,
            override=args.route_name, pinned=pinned_sampling(args),
            exact_count=engine.count_tokens, ask_model=engine.classify)
        return routed.event
    finally:
        await engine.close()


def describe(event: RouteDecision) -> str:
    count = "" if event.token_count == "exact" else f" ({event.token_count})"
    fallback = f", model fallback {event.fallback_ms:.0f} ms" if event.fallback_ms else ""
    lines = [
        f"route       {event.route}  (confidence {event.confidence:.2f}, {event.source})",
        f"reason      {event.reason}",
        f"template    {event.route} ({event.template_source}), output {event.output}",
        f"budget      prompt {event.prompt_tokens}{count} of {event.prompt_budget} tokens; "
        f"reply reserve {event.reply_reserve}, KV reserved {event.kv_reserved} of "
        f"{event.n_ctx} cells",
        f"sampling    temperature {event.temperature:g}, max_tokens {event.max_tokens}",
        f"decided in  {event.route_ms:.2f} ms{fallback}",
    ]
    return "\n".join(lines)
