"""Does the app slow decoding down, does typing stay responsive while a reply streams,
and does a long reply render as fast at its end as at its start?

One process, one model, one prompt, greedy with a fixed token count (``--ignore-eos``):

1. ``kvchat ask`` (its real entry point, stdout to /dev/null) and the app (headless,
   through Textual's pilot) take turns, ``--reps`` times each; the decode rate of each
   run is the one the engine reports in its ``done`` event (stored with the reply).
   Both ask for route ``chat``, which leaves sampling alone.
2. While the app streams, a key press is posted every ``--key-every`` seconds; its
   delay is the time from posting the key to the message box's ``Changed`` message
   (queueing behind reply chunks, dispatch, the edit; not the terminal's paint).
3. A 10,000-token Markdown reply is fed to a reply widget in 4-token chunks, as the
   reply worker would post them; the time per chunk (Markdown append and the screen
   update after it) in the first tenth is compared with the last tenth.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/tui_streaming.py --reps 5 --tokens 256
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from textual import events
from textual.widgets import TextArea

from engine.config import KvchatConfig, ModelConfig, SamplingConfig
from engine.local_engine import LocalEngine
from engine.store import Store
from tui.app import KvchatApp
from tui.cli import main as kvchat_main
from tui.messages import ModelReady, PromptSubmitted, ReplyFailed, ReplyFinished
from tui.widgets.chat_pane import ChatPane

PROMPT = "Tell me about the history of the printing press."


def last_reply_rate(home: Path) -> tuple[float, int]:
    with Store(home / "kvchat.db") as store:
        conv = store.list_conversations(limit=1)[0]
        reply = store.messages(conv.id)[-1]
    stats = reply.stats or {}
    return float(stats["tokens_per_s"]), int(stats["completion_tokens"])


def run_ask(home: Path, args: argparse.Namespace) -> tuple[float, int]:
    os.environ["KVCHAT_HOME"] = str(home)
    config = home / "config.toml"
    config.write_text(f"[model]\nn_threads = {args.threads}\n" if args.threads else "")
    argv = ["ask", "--config", str(config), "--route", "chat", "--ignore-eos",
            "--temp", "0", "--seed", "0", "--max-tokens", str(args.tokens),
            "--ctx", str(args.ctx), PROMPT]
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        code = kvchat_main(argv)
    if code != 0:
        raise SystemExit(f"kvchat ask exited {code}")
    return last_reply_rate(home)


async def run_app(home: Path, args: argparse.Namespace) -> tuple[float, int, list[float]]:
    os.environ["KVCHAT_HOME"] = str(home)
    config = KvchatConfig(model=ModelConfig(n_ctx=args.ctx, n_threads=args.threads),
                          sampling=SamplingConfig(temperature=0.0, seed=0,
                                                  max_tokens=args.tokens))
    app = KvchatApp(config, LocalEngine(config.model, config.sampling, config.kv),
                    Store(home / "kvchat.db"), route="chat", ignore_eos=True,
                    pinned=("max_tokens", "temperature", "seed"),
                    prefs_file=home / "ui-prefs.json")
    done: list[ReplyFinished | ReplyFailed] = []
    ready: list[ModelReady] = []
    changed_at: list[float] = []
    changed = asyncio.Event()
    finished = asyncio.Event()

    def hook(message: object) -> None:
        if isinstance(message, ReplyFinished | ReplyFailed):
            done.append(message)
            finished.set()
        elif isinstance(message, ModelReady):
            ready.append(message)
        elif isinstance(message, TextArea.Changed):
            changed_at.append(time.perf_counter())
            changed.set()

    delays: list[float] = []
    async with app.run_test(size=(160, 48), message_hook=hook) as pilot:
        while not ready:
            await pilot.pause(0.05)
        app.post_message(PromptSubmitted(PROMPT, "chat"))
        await asyncio.sleep(0.5)  # past the prefill: keys land among the tokens
        while not done:
            # Waiting on events, never polling: the benchmark must not take the CPU
            # that decoding needs.
            before = len(changed_at)
            changed.clear()
            sent = time.perf_counter()
            app.post_message(events.Key("x", "x"))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), timeout=5)
            if len(changed_at) > before:
                delays.append(changed_at[before] - sent)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(finished.wait(), timeout=args.key_every)
    final = done[0]
    if isinstance(final, ReplyFailed):
        raise SystemExit(f"the app's reply failed: {final.message}")
    return final.done.tokens_per_s, final.done.completion_tokens, delays


def long_markdown(n_sections: int) -> str:
    """Prose, lists and code blocks, as a long reply would mix them."""
    parts = []
    for i in range(n_sections):
        parts.append(f"## Part {i}\n\nThe press changed how ideas moved: section {i} "
                     "covers the workshops, the type founders and the paper trade, with "
                     "**bold** claims and `inline code` now and then.\n\n"
                     f"- point {i}.1 about movable type\n- point {i}.2 about ink\n\n"
                     "```python\n"
                     f"def section_{i}(pages: int) -> int:\n"
                     "    return pages * 2  # two sides\n"
                     "```\n\n")
    return "".join(parts)


async def long_reply(args: argparse.Namespace) -> dict[str, float | int]:
    """Time per chunk of a 10,000-token reply, first tenth against last tenth."""
    engine = LocalEngine(ModelConfig(n_ctx=512))
    await engine.start()
    text = long_markdown(10)
    per_section = engine.count_tokens(text) or 1
    text = long_markdown(max(1, round(10 * args.long_tokens / per_section)))
    n_tokens = engine.count_tokens(text) or 0
    await engine.close()
    n_chunks = max(10, n_tokens // 4)
    size = len(text) / n_chunks
    chunks = [text[round(i * size):round((i + 1) * size)] for i in range(n_chunks)]

    app = KvchatApp(KvchatConfig(), LocalEngine(ModelConfig(n_ctx=512)),
                    Store(Path(tempfile.mkdtemp()) / "kvchat.db"),
                    prefs_file=Path(tempfile.mkdtemp()) / "ui-prefs.json")
    times: list[float] = []
    async with app.run_test(size=(160, 48)) as pilot:
        pane = app.query_one(ChatPane)
        reply = await pane.add_reply()
        body = reply.body
        started = time.perf_counter()
        for chunk in chunks:
            t0 = time.perf_counter()
            await body.append(chunk)
            await pilot.pause()
            times.append(time.perf_counter() - t0)
            if len(times) % (n_chunks // 10) == 0:
                tenth_ms = statistics.median(times[-(n_chunks // 10):]) * 1000
                print(f"long reply: {len(times)}/{n_chunks} chunks, median "
                      f"{tenth_ms:.1f} ms a chunk in this tenth", file=sys.stderr)
        total = time.perf_counter() - started
        assert body.source == text
    tenth = len(times) // 10
    first, last = statistics.median(times[:tenth]), statistics.median(times[-tenth:])
    return {"tokens": n_tokens, "chunks": n_chunks, "first_tenth_ms": first * 1000,
            "last_tenth_ms": last * 1000, "ratio": last / first, "total_s": total}


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--ctx", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=None,
                        help="llama.cpp threads for both faces (default: every core)")
    parser.add_argument("--key-every", type=float, default=0.1)
    parser.add_argument("--long-tokens", type=int, default=10_000)
    parser.add_argument("--skip-long", action="store_true")
    parser.add_argument("--json", metavar="FILE", help="also write the results here")
    args = parser.parse_args()

    ask_rates: list[float] = []
    app_rates: list[float] = []
    delays: list[float] = []
    for rep in range(args.reps):
        # Alternate which face goes first, so drift on a shared machine hits both.
        order = ("ask", "app") if rep % 2 == 0 else ("app", "ask")
        for face in order:
            home = Path(tempfile.mkdtemp(prefix=f"kvchat-bench-{face}-"))
            if face == "ask":
                rate, n = run_ask(home, args)
                ask_rates.append(rate)
            else:
                rate, n, keys = asyncio.run(run_app(home, args))
                app_rates.append(rate)
                delays.extend(keys)
            print(f"rep {rep + 1} {face}: {rate:.2f} tok/s ({n} tokens)", file=sys.stderr)

    if not ask_rates:  # --reps 0: only the long reply
        print(json.dumps({"long_reply": asyncio.run(long_reply(args))}, indent=2))
        return
    result: dict[str, object] = {
        "prompt": PROMPT, "tokens": args.tokens, "n_ctx": args.ctx, "reps": args.reps,
        "threads": args.threads,
        "ask_tok_s": spread(ask_rates), "app_tok_s": spread(app_rates),
        "app_over_ask": statistics.median(app_rates) / statistics.median(ask_rates),
        "ask_runs": ask_rates, "app_runs": app_rates,
        "key_delay_ms": {**{k: v * 1000 for k, v in spread(delays).items()},
                         "p95": sorted(delays)[int(0.95 * (len(delays) - 1))] * 1000,
                         "n": len(delays)} if delays else None,
        "cpu_count": os.cpu_count(),
    }
    if not args.skip_long:
        result["long_reply"] = asyncio.run(long_reply(args))
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
