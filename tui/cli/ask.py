"""``kvchat ask``: one prompt, the reply streamed to stdout (or every event as JSON)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import AsyncIterator

from engine.config import KvchatConfig
from engine.errors import BranchError, KvchatError
from engine.events import (
    ChatFormatFallback,
    Done,
    Error,
    Event,
    OutputCheck,
    PromptTruncated,
    Retry,
    RouteDecision,
    TokenChunk,
)
from engine.session import ChatSession
from engine.store import Store
from engine.structured.spec import OutputSpec
from tui.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from tui.cli.ask_n import ask_n, check_n
from tui.cli.options import pinned_sampling, read_prompt
from tui.cli.startup import check_first_load, start_up
from tui.cli.structured import output_spec
from tui.safe_text import json_text, visible

# Error events a person caused (the prompt, the server's address or API key, the model
# file), as opposed to failures of the machine: the same exit code as when the same
# mistake stops the start (a 401 on the model list or on the reply alike).
USAGE_ERROR_CODES = {"prompt_too_long", "prompt_empty", "prompt_not_utf8", "server_auth",
                     "server_unreachable", "server_not_found", "model_file"}


def run_ask(args: argparse.Namespace) -> int:
    jsonl = args.events == "jsonl"
    try:
        check_n(args)
        _check_branch_options(args)
        prompt = "" if args.regenerate else read_prompt(args.prompt)
        if args.n is not None:
            return asyncio.run(ask_n(args, prompt))
        return asyncio.run(_ask(args, prompt, jsonl))
    except KvchatError as exc:
        if jsonl:
            _write_line(Error(code=exc.code, message=exc.message).model_dump_json())
        raise


async def _ask(args: argparse.Namespace, prompt: str, jsonl: bool) -> int:
    output = output_spec(args)  # a bad --schema fails before the model loads
    # A structured reply may take several attempts: stdout gets only the final text.
    stream = output is None
    with start_up(args, app=False) as ready:
        config, store, routes, engine = ready.config, ready.store, ready.routes, ready.engine
        _check_branch(args, store)  # a wrong message id fails before the model loads
        try:
            await check_first_load(config)  # an abort in llama.cpp ends a child, not this
            info = await engine.start()
            if jsonl:
                _write_line(info.model_dump_json())
            elif info.chat_format_note:
                _note(info.chat_format_note)
            for snapshot in engine.memory:  # planned, then measured after load
                if jsonl:
                    _write_line(snapshot.model_dump_json())
                elif snapshot.stage == "planned":
                    for warning in snapshot.warnings:
                        _note(warning)
                    if not snapshot.fits:  # a detected budget: one that was set refuses
                        _note(f"the memory plan says the model does not fit "
                              f"({snapshot.verdict}); loaded anyway, its weights mapped "
                              "from the file (--budget SIZE refuses what does not fit)")
            session = ChatSession.for_config(engine, store, config, routes)
            final: Event | None = None
            streamed = False
            async for event in _turn(session, args, prompt, config, output):
                final = event
                if jsonl:
                    _write_line(event.model_dump_json())
                else:
                    streamed = _show(event, stream) or streamed
        finally:
            await engine.close()
    return _finish(final, jsonl, strict=output is not None, streamed=streamed)


def _show(event: Event, stream: bool) -> bool:
    """One event as ``kvchat ask`` shows it: the reply on stdout, notes on stderr.
    Returns whether reply text went to stdout. A terminal is shown the model's text
    with what it would act on escaped (tui.safe_text); a pipe gets it as generated."""
    if isinstance(event, TokenChunk) and stream:
        sys.stdout.write(visible(event.text) if sys.stdout.isatty() else event.text)
        sys.stdout.flush()
        return bool(event.text)
    if isinstance(event, Retry):
        if stream:
            sys.stdout.write("\n")
        _note(f"attempt {event.attempt - 1} was malformed ({event.reason}); retrying: "
              f"{event.strategy.replace('_', ' ')}")
    elif isinstance(event, OutputCheck) and event.final and not event.ok:
        _note(f"attempt {event.attempt} failed its check: {'; '.join(event.errors[:3])}")
    elif isinstance(event, Done) and not stream:
        sys.stdout.write(visible(event.text) if sys.stdout.isatty() else event.text)
    elif isinstance(event, PromptTruncated | ChatFormatFallback):
        _note(event.message)
    elif isinstance(event, RouteDecision) and sys.stderr.isatty():
        print(visible(f"[route {event.route} ({event.confidence:.2f}): {event.reason}]"),
              file=sys.stderr)
    return False


def _note(text: str) -> None:
    print(f"kvchat: note: {visible(text)}", file=sys.stderr)


def _check_branch_options(args: argparse.Namespace) -> None:
    """``--regenerate`` and ``--edit`` name a conversation; only ``--edit`` takes text."""
    if args.regenerate and args.edit is not None:
        raise BranchError("--regenerate and --edit cannot be used together")
    option = "--regenerate" if args.regenerate else "--edit" if args.edit else None
    if option and args.conversation is None:
        raise BranchError(f"{option} needs --conversation ID")
    if args.regenerate and args.prompt is not None:
        raise BranchError("--regenerate takes no prompt: it answers the last message again")
    if args.regenerate and args.route is not None:
        raise BranchError("--regenerate answers through the message's own route: "
                          "--route cannot be used with it")
    if args.prompt is None and not args.regenerate:
        raise BranchError("a prompt is needed (or --regenerate)" if option is None
                          else "--edit needs the new text as the prompt")


def _check_branch(args: argparse.Namespace, store: Store) -> None:
    if args.edit is not None:
        store.editable(args.edit, args.conversation)
    elif args.regenerate:
        store.to_answer_again(args.conversation)


def _turn(session: ChatSession, args: argparse.Namespace, prompt: str, config: KvchatConfig,
          output: OutputSpec | None) -> AsyncIterator[Event]:
    """The events of the turn the options ask for: a new message, an edit or a new
    reply to the last message."""
    common = {"ignore_eos": args.ignore_eos, "pinned": pinned_sampling(args),
              "output": output}
    if args.regenerate:
        return session.regenerate(args.conversation, config.sampling, **common)
    if args.edit is not None:
        return session.edit(args.edit, prompt, config.sampling, route=args.route, **common)
    return session.send(prompt, args.conversation, config.sampling, route=args.route,
                        **common)


def _finish(final: Event | None, jsonl: bool, strict: bool = False,
            streamed: bool = False) -> int:
    """The exit code. ``strict``: the user asked for a format (``--format``/``--schema``),
    so a reply still malformed after every attempt fails the command; a check the
    route's template asked for only says so on stderr. ``streamed``: part of a reply
    went to stdout, whose line an error ends first."""
    if isinstance(final, Done) and final.output_ok is False and strict:
        if not jsonl:
            sys.stdout.write("\n")
            print(f"kvchat: error: the reply is still malformed after {final.attempts} "
                  "attempts (kvchat retries lists it)", file=sys.stderr)
        return EXIT_FAILURE
    if isinstance(final, Done):
        if not jsonl:
            sys.stdout.write("\n")
            sys.stdout.flush()
            if sys.stderr.isatty():
                evicted = (f", {final.evictions} evictions ({final.evicted_tokens} tokens)"
                           if final.evictions else "")
                retried = f", {final.attempts} attempts" if final.attempts > 1 else ""
                print(f"[{final.completion_tokens} tokens, {final.tokens_per_s:.1f} tok/s, "
                      f"{final.finish_reason}{evicted}{retried}]", file=sys.stderr)
        return EXIT_OK
    if isinstance(final, Error):
        if not jsonl:
            if streamed:
                sys.stdout.write("\n")
                sys.stdout.flush()
            print(f"kvchat: error: {visible(final.message)}", file=sys.stderr)
        return EXIT_USAGE if final.code in USAGE_ERROR_CODES else EXIT_FAILURE
    return EXIT_FAILURE


def _write_line(line: str) -> None:
    try:
        sys.stdout.write(json_text(line) + "\n")  # the same JSON, safe on a terminal
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, without a second error on exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(EXIT_OK) from None
