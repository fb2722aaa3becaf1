"""``kvchat``: the Textual app by default, and headless commands beside it.

Every error a person can cause is one line on stderr and exit code 2; other
failures exit 1; no traceback reaches the terminal.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from engine.errors import KvchatError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _whole(value: str, minimum: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if number < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {number}")
    return number


def _positive(value: str) -> int:
    return _whole(value, 1)


def _non_negative(value: str) -> int:
    return _whole(value, 0)


def _float(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None


def _model_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    default = argparse.SUPPRESS if suppress else None
    group = parser.add_argument_group("model and sampling")
    group.add_argument("--model", metavar="PATH|NAME", default=default,
                       help="GGUF file to load, or a name `kvchat models` lists "
                            "(default: the bundled SmolLM2-135M-Instruct)")
    group.add_argument("--config", metavar="PATH", default=default,
                       help="config file (default: config.toml in the platform's config dir)")
    group.add_argument("--ctx", metavar="N", type=_positive, default=default,
                       help="context size in tokens")
    group.add_argument("--parallel", metavar="N", type=_positive, default=default,
                       help="replies decoded together in one batch (sequences the context "
                            "holds; default 1)")
    group.add_argument("--kv-layout", choices=["shared", "split"], default=default,
                       help="with --parallel: one pool of cells for every reply (shared, "
                            "the default) or ctx / N cells each (split, faster attention)")
    group.add_argument("--kv-type", choices=["auto", "f16", "q8_0", "q4_0"], default=default,
                       help="KV cache type (auto: f16 unless quantizing makes the model fit)")
    group.add_argument("--budget", metavar="SIZE", default=default,
                       help="memory the model may use, e.g. 36GiB (default: detected)")
    group.add_argument("--speculative", choices=["auto", "prompt-lookup", "draft", "off"],
                       default=default,
                       help="speculative decoding (default: auto, on where it pays)")
    group.add_argument("--draft-model", metavar="PATH", default=default,
                       help="smaller GGUF with the same vocabulary, for --speculative draft")
    group.add_argument("--max-tokens", metavar="N", type=_positive, default=default,
                       help="most tokens in one reply")
    group.add_argument("--temp", metavar="T", type=_float, default=default,
                       help="sampling temperature (0 = greedy)")
    group.add_argument("--seed", metavar="S", type=_non_negative, default=default,
                       help="fixed sampling seed")
    group.add_argument("--conversation", metavar="ID", type=_positive, default=default,
                       help="continue a stored conversation")


def build_parser() -> argparse.ArgumentParser:
    from tui.cli.options import OneLineParser

    parser = OneLineParser(
        prog="kvchat",
        description="Chat with a local GGUF model through llama.cpp, and watch it work.",
    )
    _model_options(parser, suppress=False)
    from tui.cli.backend import add_backend_options

    add_backend_options(parser, suppress=False)
    parser.add_argument("--route", metavar="NAME",
                        help="in the app, send every message through route NAME "
                             "(/route NAME message overrides one)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_ask_parser(commands)
    _add_history_parsers(commands)
    _add_tool_parsers(commands)
    return parser


def _add_ask_parser(commands: Any) -> None:
    from tui.cli.backend import add_backend_options
    from tui.cli.structured import add_format_options

    ask = commands.add_parser("ask", help="stream one reply to stdout",
                              description="Send one prompt and stream the reply to stdout.")
    ask.add_argument("prompt", nargs="?",
                     help="the prompt ('-' reads it from stdin); with --edit, the new text")
    ask.add_argument("--regenerate", action="store_true",
                     help="answer the last message of --conversation again (the old reply "
                          "is kept as a sibling)")
    ask.add_argument("--edit", metavar="MESSAGE_ID", type=_positive,
                     help="send the prompt as a new version of your message MESSAGE_ID in "
                          "--conversation (`kvchat history ID` shows the ids)")
    ask.add_argument("--events", choices=["jsonl"],
                     help="print every engine event as one JSON object per line instead")
    ask.add_argument("--ignore-eos", action="store_true",
                     help="keep generating to --max-tokens (for benchmarks)")
    ask.add_argument("--n", metavar="N", type=_positive,
                     help="give N answers to the prompt, evaluated once and decoded "
                          "together (sets --parallel to N unless given)")
    ask.add_argument("--json", action="store_true",
                     help="with --n: print the answers as a JSON list")
    ask.add_argument("--route", metavar="NAME",
                     help="send this message through route NAME (code, qa, summarize, chat "
                          "or your own) instead of the router's choice")
    _model_options(ask, suppress=True)
    add_backend_options(ask, suppress=True)
    add_format_options(ask)


def _add_history_parsers(commands: Any) -> None:
    """history, search, retries and export: what the store holds."""
    history = commands.add_parser("history", help="list stored conversations, or the "
                                  "messages of one (with their ids)")
    history.add_argument("id", type=_positive, metavar="ID", nargs="?",
                         help="show this conversation's messages (the path shown)")
    history.add_argument("--json", action="store_true", help="machine-readable output")
    history.add_argument("--limit", type=_positive, metavar="N", help="show the newest N")
    from tui.cli.search import add_search_parser

    add_search_parser(commands, _positive)
    from tui.cli.retries import add_retries_parser

    add_retries_parser(commands, _positive)
    export = commands.add_parser("export", help="write out one conversation")
    export.add_argument("id", type=_positive, metavar="ID", help="conversation id")
    export.add_argument("--format", choices=["md", "json"], default="md")
    export.add_argument("-o", "--output", metavar="FILE",
                        help="write here instead of stdout (a new file is private to you)")
    export.add_argument("--force", action="store_true",
                        help="replace FILE if it exists (never the conversation store)")
    export.add_argument("--all-branches", action="store_true",
                        help="every message, edits and other replies too (JSON: each with "
                             "its parent_id; Markdown: each branch marked)")


def _add_tool_parsers(commands: Any) -> None:
    """models, plan, route, synth, bench, quantize, quality and serve."""
    from tui.cli.models import add_models_parser
    from tui.cli.plan import add_plan_parser
    from tui.cli.synth import add_synth_parser

    add_models_parser(commands)

    add_plan_parser(commands, _positive)
    from tui.cli.route import add_route_parser

    add_route_parser(commands, _model_options)
    add_synth_parser(commands, _non_negative)
    from tui.cli.bench import add_bench_parser

    add_bench_parser(commands, _positive)
    from tui.cli.quality import add_quality_parser
    from tui.cli.quantize import add_quantize_parser

    add_quantize_parser(commands, _positive)
    add_quality_parser(commands, _positive)
    from tui.cli.serve import add_serve_parser

    add_serve_parser(commands, _positive, _non_negative)


def _dispatch(args: argparse.Namespace) -> Callable[[argparse.Namespace], int]:
    if args.command == "ask":
        from tui.cli.ask import run_ask

        return run_ask
    if args.command == "route":
        from tui.cli.route import run_route

        return run_route
    if args.command == "models":
        from tui.cli.models import run_models

        return run_models
    if args.command == "plan":
        from tui.cli.plan import run_plan

        return run_plan
    if args.command == "retries":
        from tui.cli.retries import run_retries

        return run_retries
    if args.command == "bench":
        from tui.cli.bench import run_bench_command

        return run_bench_command
    if args.command == "serve":
        from tui.cli.serve import run_serve

        return run_serve
    if args.command in ("quantize", "quality"):
        from tui.cli.quality import run_quality
        from tui.cli.quantize import run_quantize

        return run_quantize if args.command == "quantize" else run_quality
    if args.command == "synth":
        from tui.cli.synth import run_synth

        return run_synth
    if args.command == "search":
        from tui.cli.search import run_search

        return run_search
    if args.command in ("history", "export"):
        from tui.cli.history import run_export, run_history

        return run_history if args.command == "history" else run_export
    from tui.cli.chat import run_tui

    return run_tui


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)(args)
    except KvchatError as exc:
        from tui.safe_text import visible

        # Messages quote what was typed and what files hold: shown, never acted on.
        print(f"kvchat: error: {visible(exc.message)}", file=sys.stderr)
        return EXIT_USAGE if exc.usage else EXIT_FAILURE
    except KeyboardInterrupt:
        print("kvchat: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
