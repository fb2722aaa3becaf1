"""``kvchat ask --n N``: N answers to one prompt, evaluated once and decoded together.

The prompt goes to the engine as one request (``ChatEngine.answers``), the system
prompt first; it is not routed or stored. Plain output gives each answer under a
``--- answer K ---`` header; ``--json`` a list of the answers' texts; ``--events
jsonl`` every event, each tagged with its answer's ``reply`` number.
"""

from __future__ import annotations

import argparse
import json
import sys

from engine.api import ChatMessage, ChatRequest
from engine.errors import KvchatError
from engine.events import Done, Error
from tui.cli import EXIT_FAILURE, EXIT_OK
from tui.cli.startup import check_first_load, start_up
from tui.safe_text import json_text, visible


async def ask_n(args: argparse.Namespace, prompt: str) -> int:
    n = args.n
    with start_up(args, app=False) as ready:
        config, engine = ready.config, ready.engine
        try:
            await check_first_load(config)  # an abort in llama.cpp ends a child, not this
            info = await engine.start()
            if args.events == "jsonl":
                print(json_text(info.model_dump_json()), flush=True)
            system = config.chat.system_prompt
            messages = ([ChatMessage(role="system", content=system)] if system else []) + [
                ChatMessage(role="user", content=prompt)]
            request = ChatRequest(messages=tuple(messages), sampling=config.sampling,
                                  ignore_eos=args.ignore_eos)
            ends: dict[int, Done | Error] = {}
            async for event in engine.answers(request, n):
                if args.events == "jsonl":
                    print(json_text(event.model_dump_json()), flush=True)
                if isinstance(event, Done | Error):
                    ends[event.reply or 0] = event
        finally:
            await engine.close()
    return _show(args, [ends.get(k) for k in range(n)])


def _show(args: argparse.Namespace, ends: list[Done | Error | None]) -> int:
    failed = [e for e in ends if not isinstance(e, Done)]
    if args.events != "jsonl":
        texts = [e.text if isinstance(e, Done) else "" for e in ends]
        if args.json:
            sys.stdout.write(json_text(json.dumps(texts)) + "\n")
        else:
            show = visible if sys.stdout.isatty() else str
            for k, text in enumerate(texts, 1):
                sys.stdout.write(f"--- answer {k} ---\n{show(text)}\n")
    for event in failed:
        why = event.message if isinstance(event, Error) else "no answer came back"
        print(f"kvchat: error: {visible(why)}", file=sys.stderr)
    return EXIT_FAILURE if failed else EXIT_OK


def check_n(args: argparse.Namespace) -> None:
    """``--n`` asks for one new prompt: no conversation, edit or format; it needs as
    many sequences, so ``--parallel`` becomes N unless it was given."""
    if args.n is None:
        if args.json:
            raise KvchatError("--json goes with --n (for one reply, --events jsonl)")
        return
    for option, used in (("--conversation", args.conversation is not None),
                         ("--regenerate", args.regenerate), ("--edit", args.edit is not None),
                         ("--format", getattr(args, "output_format", None) is not None),
                         ("--schema", getattr(args, "schema", None) is not None)):
        if used:
            raise KvchatError(f"--n gives answers to one new prompt: {option} cannot "
                              "be used with it")
    if getattr(args, "parallel", None) is None:
        args.parallel = args.n
