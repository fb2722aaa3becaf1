"""Answer quality of a bundled model, per route, with checks a program can make.

Every prompt goes through ChatSession exactly as a user's message does (the bundled
route templates, the config's system prompt, the retry ladder, a real SQLite store),
each in a new conversation, with greedy decoding (temperature 0 pinned, seed 0). The
route is forced per prompt set, like ``--route``, so a routing mistake does not count
against the answer; the route the router would have chosen is recorded beside it. JSON
requests go as ``--format json --schema`` does, routed by the router. Prompts and what
passes: benchmarks/answer_quality_data.py; the checkers: answer_quality_checks.py.

    .venv/bin/python benchmarks/answer_quality.py [--model smollm2|gemma3-270m]
        [--routes code,qa,summarize,chat,json] [--limit N] [--max-tokens N]
        [--json PATH] [--failures]

``--json PATH`` merges into PATH when it holds the same model and settings: the routes
run now replace theirs, the others stay (so one model can be run a route at a time).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.answer_quality_checks import CHECKERS  # noqa: E402
from benchmarks.answer_quality_data import CHAT, CODE, JSON, QA, SUMMARIZE  # noqa: E402
from engine.backends.local import LocalEngine  # noqa: E402
from engine.config import KvchatConfig, ModelConfig, SamplingConfig  # noqa: E402
from engine.errors import KvchatError  # noqa: E402
from engine.events import Done, Error, OutputCheck, RouteDecision, TokenChunk  # noqa: E402
from engine.model.bundled import bundled_model_path, default_model_path  # noqa: E402
from engine.routing.service import RouteService  # noqa: E402
from engine.routing.templates import bundled_template_files, load_templates  # noqa: E402
from engine.session import ChatSession  # noqa: E402
from engine.store import Store  # noqa: E402
from engine.structured.spec import OutputSpec  # noqa: E402

SETS: dict[str, list[dict[str, Any]]] = {"code": CODE, "qa": QA, "summarize": SUMMARIZE,
                                         "chat": CHAT, "json": JSON}
MODELS: dict[str, Callable[[], Path]] = {
    "smollm2": default_model_path,
    "gemma3-270m": lambda: bundled_model_path("gemma3-270m")}
MERGE_KEYS = ("model", "n_ctx", "max_tokens_pinned", "templates_dir")
"""Results merge into a file only when these match."""
REPLY_CHARS = 1500
"""How much of each reply the JSON keeps, for reading the failures."""


@dataclass
class Outcome:
    """One prompt: what came back and whether it passed."""

    item: int
    prompt: str
    route: str
    """The route the reply went through."""
    router_pick: str
    """The route the router would have chosen on its own."""
    passed: bool
    why: str
    attempts: int
    first_ok: bool | None
    """For a checked reply (code, list, JSON): whether the first attempt as generated
    passed the engine's output check; None for prose."""
    first_error: str
    """The output check's first complaint about the first attempt."""
    settled_by: str
    """The ladder step whose output was final (as_generated, repair, stricter_prompt,
    grammar), ``failed`` when none passed its check; empty for prose."""
    first_reply: str
    """The first attempt's text when it failed its check."""
    finish_reason: str
    completion_tokens: int
    tokens_per_s: float
    seconds: float
    reply: str


@dataclass
class Heard:
    """What one message's events said, beyond the final text."""

    route: str = ""
    checks: list[OutputCheck] = field(default_factory=list)
    first_text: str = ""
    """The first attempt's text, kept once its check arrives."""


def templates_digest(user_dir: Path | None) -> str:
    """Which template texts a result was measured with (12 hex digits of SHA-256)."""
    digest = hashlib.sha256()
    extra = sorted(user_dir.glob("*.toml")) if user_dir else []
    for path in [*bundled_template_files(), *extra]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


async def ask(session: ChatSession, prompt: str, route: str | None,
              output: OutputSpec | None, max_tokens: int | None,
              ) -> tuple[Done | Error, Heard]:
    """Send one message in a new conversation: its final event and what the events
    before it said (route, output checks, the first attempt's text)."""
    pinned = ("temperature", "seed") + (("max_tokens",) if max_tokens else ())
    sampling = SamplingConfig(temperature=0.0, seed=0, max_tokens=max_tokens or 512)
    final: Done | Error | None = None
    heard, parts = Heard(route or ""), []
    async for event in session.send(prompt, sampling=sampling, route=route, pinned=pinned,
                                    output=output):
        if isinstance(event, RouteDecision):
            heard.route = event.route
        elif isinstance(event, TokenChunk) and not heard.checks:
            parts.append(event.text)
        elif isinstance(event, OutputCheck):
            heard.checks.append(event)
            heard.first_text = heard.first_text or "".join(parts)
        elif isinstance(event, Done | Error):
            final = event
    assert final is not None, "the session ended without done or error"
    return final, heard


async def run_item(session: ChatSession, route: str, index: int, item: dict[str, Any],
                   max_tokens: int | None) -> Outcome:
    prompt = item["prompt"]
    output = OutputSpec(format="json", schema=item["schema"]) if route == "json" else None
    forced = None if route == "json" else route
    started = time.perf_counter()
    final, heard = await ask(session, prompt, forced, output, max_tokens)
    seconds = round(time.perf_counter() - started, 2)
    router_pick = session.routes.router.route(prompt).route if session.routes else ""
    first = heard.checks[0] if heard.checks else None
    last = heard.checks[-1] if heard.checks else None
    structured = {
        "first_ok": first.ok if first else None,
        "first_error": first.errors[0] if first and first.errors else "",
        "settled_by": (last.strategy if last.ok else "failed") if last else "",
        "first_reply": heard.first_text[:REPLY_CHARS // 2] if first and not first.ok else ""}
    if isinstance(final, Error):
        return Outcome(index, prompt[:100], heard.route, router_pick, False,
                       f"error {final.code}: {final.message}", 0, **structured,
                       finish_reason="error", completion_tokens=0, tokens_per_s=0.0,
                       seconds=seconds, reply="")
    passed, why = CHECKERS[route](final.text, item)
    return Outcome(index, prompt[:100], heard.route, router_pick, passed, why,
                   final.attempts, **structured, finish_reason=final.finish_reason,
                   completion_tokens=final.completion_tokens,
                   tokens_per_s=round(final.tokens_per_s, 1), seconds=seconds,
                   reply=final.text[:REPLY_CHARS])


def decode_rate(outcomes: list[Outcome]) -> float | None:
    """The median of the replies' decode rates (each reply's final attempt, as its
    ``done`` event reports it; replies of 8 tokens or more). A median, because on a
    shared machine a neighbour's burst can stall a few replies by orders of magnitude."""
    rates = [o.tokens_per_s for o in outcomes if o.completion_tokens >= 8 and o.tokens_per_s]
    return round(statistics.median(rates), 1) if rates else None


def summarize_route(route: str, outcomes: list[Outcome], user_dir: Path | None,
                    ) -> dict[str, Any]:
    n = len(outcomes)
    checked = [o.first_ok for o in outcomes if o.first_ok is not None]
    agrees = sum(o.router_pick == route for o in outcomes)
    return {
        "items": n,
        "passed": sum(o.passed for o in outcomes),
        "pass_rate": round(sum(o.passed for o in outcomes) / n, 4) if n else None,
        "router_agrees": None if route == "json" else round(agrees / n, 4) if n else None,
        "routes_taken": {r: sum(o.route == r for o in outcomes)
                         for r in sorted({o.route for o in outcomes})},
        "decode_tokens_per_s": decode_rate(outcomes),
        "mean_attempts": round(sum(o.attempts for o in outcomes) / n, 2) if n else None,
        "first_attempt_ok_rate": round(sum(checked) / len(checked), 4) if checked else None,
        "settled_by": dict(Counter(o.settled_by for o in outcomes if o.settled_by)),
        "cut_off": sum(o.finish_reason == "length" for o in outcomes),
        "seconds": round(sum(o.seconds for o in outcomes), 1),
        "templates": templates_digest(user_dir),
        "source": source_version(),
        "run_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "outcomes": [asdict(o) for o in outcomes],
    }


async def run_routes(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load the model once, run each route's prompts; (model facts, per-route results)."""
    model, n_ctx, user_dir = args.model, args.ctx, args.templates
    path = MODELS[model]()
    engine = LocalEngine(ModelConfig(path=path, n_ctx=n_ctx),
                         SamplingConfig(temperature=0.0, seed=0))
    info = await engine.start()
    results: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp) / "aq.db") as store:
            templates = load_templates(user_dir)
            for problem in templates.problems:
                print(f"answer_quality: {problem}", file=sys.stderr)
            session = ChatSession.for_config(engine, store, KvchatConfig(),
                                             routes=RouteService(templates))
            for route in args.routes:
                outcomes = []
                for i, item in enumerate(SETS[route][:args.limit]):
                    outcome = await run_item(session, route, i, item, args.max_tokens)
                    outcomes.append(outcome)
                    mark = "pass" if outcome.passed else "FAIL"
                    print(f"{model} {route:9} {i:2} {mark} {outcome.seconds:6.1f}s "
                          f"att={outcome.attempts} {outcome.why[:70]}", file=sys.stderr)
                results[route] = summarize_route(route, outcomes, user_dir)
    finally:
        await engine.close()
    facts = {"model": model, "model_file": path.name, "model_name": info.name,
             "chat_format": info.chat_format, "n_ctx": n_ctx, "backend": info.backend,
             "max_tokens_pinned": args.max_tokens,
             "templates_dir": str(user_dir) if user_dir else None, "machine": machine(),
             "source": source_version()}
    return facts, results


def source_version() -> str:
    """The commit measured, ``-dirty`` when the working tree had changes."""
    try:
        proc = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return proc.stdout.strip() or "unknown"


def machine() -> str:
    parts = [platform.machine(), platform.processor(), f"{os.cpu_count()} CPUs"]
    return " ".join(p for p in parts if p)


def _cell(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_table(report: dict[str, Any]) -> str:
    lines = [f"{report['model']} ({report['model_file']}, chat format "
             f"{report['chat_format']}), greedy, n_ctx {report['n_ctx']}, max_tokens "
             f"{report['max_tokens_pinned'] or 'from the templates'}",
             f"{'route':10}{'items':>6}{'pass':>6}{'rate':>7}{'router':>8}{'tok/s':>8}"
             f"{'attempts':>10}{'1st ok':>8}{'cut off':>9}"]
    for route in SETS:
        r = report["routes"].get(route)
        if r is None:
            continue
        lines.append(f"{route:10}{r['items']:>6}{r['passed']:>6}"
                     f"{_cell(r['pass_rate'], '.0%'):>7}{_cell(r['router_agrees'], '.0%'):>8}"
                     f"{_cell(r['decode_tokens_per_s'], '.1f'):>8}"
                     f"{_cell(r['mean_attempts'], '.2f'):>10}"
                     f"{_cell(r['first_attempt_ok_rate'], '.0%'):>8}{r['cut_off']:>9}")
    return "\n".join(lines)


def format_failures(report: dict[str, Any]) -> str:
    out = []
    for route, r in report["routes"].items():
        for o in r["outcomes"]:
            if not o["passed"]:
                reply = " ".join(o["reply"].split())[:160]
                out.append(f"- {route} #{o['item']}: {o['why']}\n    prompt: "
                           f"{' '.join(o['prompt'].split())[:90]}\n    reply:  {reply}")
    return "\n".join(out) or "no failures"


def merged(path: Path | None, facts: dict[str, Any], results: dict[str, Any],
           ) -> dict[str, Any]:
    """The report to write: ``path``'s other routes kept when its model and settings
    match these, else only the routes just run."""
    routes: dict[str, Any] = {}
    if path is not None and path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        same = all(old.get(k) == facts[k] for k in MERGE_KEYS)
        routes = dict(old.get("routes", {})) if same else {}
    routes.update(results)
    return {**facts, "routes": {r: routes[r] for r in SETS if r in routes}}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="smollm2")
    parser.add_argument("--routes", default=",".join(SETS),
                        help="comma-separated prompt sets: code, qa, summarize, chat, json")
    parser.add_argument("--limit", type=int, help="only the first N prompts of each set")
    parser.add_argument("--ctx", type=int, default=4096, help="context size (default 4096)")
    parser.add_argument("--max-tokens", type=int,
                        help="pin max_tokens for every reply (default: each template's)")
    parser.add_argument("--templates", type=Path, metavar="DIR",
                        help="route templates of your own, as in the config's templates/ "
                             "folder (a file replaces the bundled one of its name)")
    parser.add_argument("--json", type=Path, help="write (merge) the full results here")
    parser.add_argument("--failures", action="store_true", help="list every failed prompt")
    args = parser.parse_args(argv)
    args.routes = [r.strip() for r in args.routes.split(",") if r.strip()]
    unknown = [r for r in args.routes if r not in SETS]
    if unknown or not args.routes:
        parser.error(f"unknown route {', '.join(unknown) or '(none)'}: choose from "
                     f"{', '.join(SETS)}")
    if args.json is not None and args.json.is_file():
        try:
            json.loads(args.json.read_text(encoding="utf-8"))["routes"]
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
            parser.error(f"--json {args.json}: exists and is not a results file to merge "
                         "into")
    if args.templates is not None and not args.templates.is_dir():
        parser.error(f"--templates {args.templates}: not a folder")
    for name in ("limit", "max_tokens"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        facts, results = asyncio.run(run_routes(args))
    except KvchatError as exc:
        print(f"answer_quality: {exc}", file=sys.stderr)
        return 1
    report = merged(args.json, facts, results)
    print(format_table({**facts, "routes": results}))
    if args.failures:
        print("\n" + format_failures({"routes": results}))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n",
                             encoding="utf-8")
        if report["routes"].keys() != results.keys():
            print(f"\nall routes in {args.json}:\n{format_table(report)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
