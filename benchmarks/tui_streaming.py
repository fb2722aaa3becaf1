"""Does the app slow decoding down, does typing stay responsive while a reply streams,
and does a long reply render as fast at its end as at its start?

One model, one prompt, greedy with a fixed token count (``--ignore-eos``):

1. ``kvchat ask`` (its real entry point, stdout to /dev/null) and the app (headless,
   through Textual's pilot) take turns, ``--reps`` times each, each run in a fresh
   process; the decode rate of each run is the one the engine reports in its ``done``
   event (stored with the reply). Both ask for route ``chat``, which leaves sampling
   alone. Each face runs as a user runs it: ``OMP_WAIT_POLICY`` unset, unless
   ``--omp-compare`` adds the faces ``ask+passive`` and ``app+passive`` with
   ``OMP_WAIT_POLICY=PASSIVE`` (llama.cpp's OpenMP threads sleep between ops instead
   of spinning), taking turns with the others.
2. While the app streams, a key press is posted every ``--key-every`` seconds (fast,
   steady typing: each press also costs a screen update), except in the face
   ``app+watching``, where nobody types, the speed of a user who reads along; its
   delay is the time from posting the key to the message box's ``Changed`` message
   (queueing behind reply chunks, dispatch, the edit; not the terminal's paint).
3. A 10,000-token Markdown reply is fed to a reply widget in 4-token chunks from a
   script at full speed, through the same ``ReplyMessage.append`` the app uses; the
   time per chunk is the append, the Markdown stream catching up, and one screen
   update (layout and render), reported by tenths of the reply.

    .venv/bin/python benchmarks/tui_streaming.py --reps 10 --tokens 512 --skip-long \\
        --json benchmarks/results/tui_cpu2_512_source.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from textual import events
from textual.widgets import TextArea

from engine.backends.factory import make_engine
from engine.backends.local import LocalEngine
from engine.config import (
    KvchatConfig,
    ModelConfig,
    SamplingConfig,
    SpeculativeConfig,
    usable_cores,
)
from engine.store import Store
from tui.app import KvchatApp
from tui.cli import main as kvchat_main
from tui.config import UIConfig
from tui.messages import ModelFailed, ModelReady, PromptSubmitted, ReplyFailed, ReplyFinished
from tui.ui_priority import spare_a_core
from tui.widgets.chat_pane import ChatPane, ReplyMessage

PROMPT = "Tell me about the history of the printing press."


def last_reply_stats(home: Path) -> dict[str, object]:
    """The stats stored with the face's reply (its ``done`` event)."""
    with Store(home / "kvchat.db") as store:
        conv = store.list_conversations(limit=1)[0]
        reply = store.messages(conv.id)[-1]
    return dict(reply.stats or {})


def last_reply_rate(home: Path) -> tuple[float, int]:
    stats = last_reply_stats(home)
    return float(stats["tokens_per_s"]), int(stats["completion_tokens"])  # type: ignore[arg-type]


def run_ask(home: Path, args: argparse.Namespace) -> tuple[float, int]:
    os.environ["KVCHAT_HOME"] = str(home)
    config = home / "config.toml"
    lines = ["[model]"] + ([f"n_threads = {args.threads}"] if args.threads else []) \
        + ([f"n_gpu_layers = {args.gpu_layers}"] if args.gpu_layers is not None else []) \
        + ([f"path = {json.dumps(args.model)}"] if args.model else [])
    config.write_text("\n".join(lines) + "\n")
    argv = ["ask", "--config", str(config), "--route", "chat", "--ignore-eos",
            "--temp", "0", "--seed", "0", "--max-tokens", str(args.tokens),
            "--ctx", str(args.ctx), "--speculative", args.speculative, PROMPT]
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        code = kvchat_main(argv)
    if code != 0:
        raise SystemExit(f"kvchat ask exited {code}")
    return last_reply_rate(home)


async def run_app(home: Path, args: argparse.Namespace) -> tuple[float, int, list[float]]:
    os.environ["KVCHAT_HOME"] = str(home)
    gpu_layers = {} if args.gpu_layers is None else {"n_gpu_layers": args.gpu_layers}
    # app+verifyall: verification batches on every core, as before n_threads_verify.
    verify = usable_cores() if args.face == "app-verifyall" else None
    config = KvchatConfig(model=ModelConfig(path=Path(args.model) if args.model else None,
                                            n_ctx=args.ctx, n_threads=args.threads,
                                            n_threads_verify=verify, **gpu_layers),
                          ui=UIConfig(ui_nice=args.ui_nice, gil_switch_ms=args.gil_switch_ms,
                                      spare_core=not args.no_spare_core,
                                      engine_process=args.face != "app-thread",
                                      stream_view=args.stream_view).model_dump(),
                          sampling=SamplingConfig(temperature=0.0, seed=0,
                                                  max_tokens=args.tokens),
                          speculative=SpeculativeConfig(mode=args.speculative))
    if args.face != "app-samepriority":
        config = spare_a_core(config)  # as the kvchat command does
    if args.face == "app-spare":  # one core fewer for decodes, whatever the core count
        cores = usable_cores()
        model = config.model.model_copy(update={"n_threads": cores - 1,
                                                "n_threads_batch": cores})
        config = config.model_copy(update={"model": model})
    app = KvchatApp(config, make_engine(config, own_process=args.face != "app-thread"),
                    Store(home / "kvchat.db"), route="chat", ignore_eos=True,
                    pinned=("max_tokens", "temperature", "seed"),
                    prefs_file=home / "ui-prefs.json",
                    yield_cpu=args.face != "app-samepriority")
    done: list[ReplyFinished | ReplyFailed] = []
    ready: list[ModelReady | ModelFailed] = []
    changed_at: list[float] = []
    changed = asyncio.Event()
    finished = asyncio.Event()

    def hook(message: object) -> None:
        if isinstance(message, ReplyFinished | ReplyFailed):
            done.append(message)
            finished.set()
        elif isinstance(message, ModelReady | ModelFailed):
            ready.append(message)
        elif isinstance(message, TextArea.Changed):
            changed_at.append(time.perf_counter())
            changed.set()

    delays: list[float] = []
    async with app.run_test(size=(160, 48), message_hook=hook) as pilot:
        waited = 0.0
        while not ready:
            await pilot.pause(0.05)
            waited += 0.05
            if waited > 300:
                raise SystemExit("the app's model did not load in 300 s")
        if isinstance(ready[0], ModelFailed):
            raise SystemExit(f"the app's model failed to load: {ready[0].message}")
        # Start-up ends with the app reading the model's vocabulary for exact token
        # counts (an engine process): a user's first prompt comes after it, too.
        for _ in range(200):
            if app.engine.count_tokens("a") is not None:
                break
            await pilot.pause(0.05)
        app.post_message(PromptSubmitted(PROMPT, "chat"))
        await asyncio.sleep(0.5)  # past the prefill: keys land among the tokens
        while not done and args.face == "app-watching":
            if not app.is_running:
                raise SystemExit("the app stopped before its reply finished")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(finished.wait(), timeout=1)
        while not done:
            if not app.is_running:  # it died (its traceback is on stderr)
                raise SystemExit("the app stopped before its reply finished")
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


async def long_reply(args: argparse.Namespace,
                     source: bool = False) -> dict[str, float | int]:
    """Time per chunk of a 10,000-token reply, first tenth against last tenth; streamed
    as Markdown, or with ``source`` as highlighted source (``ui.stream_view``), whose
    rendering as Markdown at the end is timed as ``finish_s``."""
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
    tenths: list[float] = []
    async with app.run_test(size=(160, 48)) as pilot:
        while not app.ready:  # past the model load the app starts on mount
            await pilot.pause(0.1)
        pane = app.query_one(ChatPane)
        reply = await pane.add_reply(source_view=source)
        pane.anchor()
        if source:  # as the app does once the reply is laid out, before its tokens
            await pilot.pause()
            reply.prepare()
            await pilot.pause()
        started = time.perf_counter()
        for chunk in chunks:
            t0 = time.perf_counter()
            await reply.append(chunk)
            await settle(reply)
            # One frame, as the screen's update timer would run it: layout and render.
            # (pilot.pause would also walk every widget to wait for its queue, a cost
            # of the measurement, not of the app.)
            app.screen._on_timer_update()
            times.append(time.perf_counter() - t0)
            if len(times) % (n_chunks // 10) == 0 and len(tenths) < 10:
                tenths.append(statistics.median(times[-(n_chunks // 10):]) * 1000)
                print(f"long reply{' (source)' if source else ''}: "
                      f"{len(times)}/{n_chunks} chunks, median "
                      f"{tenths[-1]:.1f} ms a chunk in this tenth", file=sys.stderr)
        total = time.perf_counter() - started
        finishing = time.perf_counter()
        await reply.finish("")
        finish_s = time.perf_counter() - finishing
        await pilot.pause()
        sources = [block.source for block in reply.blocks]
        assert "".join(sources) == text == reply.text
    return {"tokens": n_tokens, "chunks": n_chunks, "markdown_blocks": len(sources),
            "median_ms_by_tenth": [round(t, 2) for t in tenths],
            "first_tenth_ms": tenths[0], "last_tenth_ms": tenths[-1],
            "ratio": tenths[-1] / tenths[0], "total_s": total, "finish_s": finish_s}


async def settle(reply: ReplyMessage) -> None:
    """Let the reply's last Markdown widget finish the append it was given."""
    for _ in range(100):
        await asyncio.sleep(0)
        if not reply.body.lock.is_locked:
            return


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


FACES = {"ask": ("ask", None), "app": ("app", None),
         "ask+passive": ("ask", "PASSIVE"), "app+passive": ("app", "PASSIVE"),
         "app+samepriority": ("app-samepriority", None),
         "app+thread": ("app-thread", None), "app+watching": ("app-watching", None),
         "app+verifyall": ("app-verifyall", None), "app+spare": ("app-spare", None)}


def run_face(face: str, argv: list[str]) -> dict[str, object]:
    """One run of a face in a fresh process, so OpenMP reads its environment anew."""
    kind, policy = FACES[face]
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    out = subprocess.run([sys.executable, __file__, "--face", kind, *argv], env=env,
                         check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def one_face(args: argparse.Namespace) -> None:
    # A face that hangs dumps every thread's stack to stderr and exits, so the run
    # says where it waited instead of running into the caller's time limit.
    faulthandler.dump_traceback_later(args.face_timeout, exit=True)
    home = Path(tempfile.mkdtemp(prefix=f"kvchat-bench-{args.face}-"))
    if args.face == "ask":
        rate, n = run_ask(home, args)
        keys: list[float] = []
    else:
        rate, n, keys = asyncio.run(run_app(home, args))
    # Speculation's own decisions follow measured step times: the same text drafted
    # differently in two faces explains a gap that the decode speed does not.
    stats = last_reply_stats(home)
    print(json.dumps({"rate": rate, "tokens": n, "key_delays": keys,
                      "drafted": stats.get("drafted_tokens"),
                      "accepted": stats.get("accepted_tokens"),
                      "decode_s": stats.get("decode_s")}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--ctx", type=int, default=1024)
    parser.add_argument("--model", help="a GGUF (default: the bundled Gemma 3 270M), with every "
                                        "layer the memory plan fits on a GPU")
    parser.add_argument("--threads", type=int, default=None,
                        help="llama.cpp threads for both faces (default: every core)")
    parser.add_argument("--gpu-layers", type=int, default=None,
                        help="model.n_gpu_layers for both faces (default: the memory plan)")
    parser.add_argument("--key-every", type=float, default=0.1)
    parser.add_argument("--long-tokens", type=int, default=10_000)
    parser.add_argument("--skip-long", action="store_true")
    parser.add_argument("--ui-nice", type=int, default=UIConfig().ui_nice,
                        help="the app's ui.ui_nice (priority steps its screen updates "
                             "give way to decoding)")
    parser.add_argument("--gil-switch-ms", type=float, default=UIConfig().gil_switch_ms,
                        help="the app's ui.gil_switch_ms (0: Python's 5 ms)")
    parser.add_argument("--no-spare-core", action="store_true",
                        help="the app decodes on every core (ui.spare_core off)")
    parser.add_argument("--speculative", choices=("auto", "off"), default="auto",
                        help="speculative decoding in both faces (auto: the default, "
                             "which speculates under greedy on a batch-invariant CPU load)")
    parser.add_argument("--stream-view", choices=("auto", "markdown", "source"),
                        default=UIConfig().stream_view,
                        help="how the app shows a reply while it streams (ui.stream_view)")
    parser.add_argument("--face-timeout", type=float, default=600,
                        help="seconds one face's process may take before it dumps its "
                             "threads' stacks and exits")
    parser.add_argument("--omp-compare", action="store_true",
                        help="also run both faces with OMP_WAIT_POLICY=PASSIVE")
    parser.add_argument("--priority-compare", action="store_true",
                        help="also run the app with its UI thread at the decode threads' "
                             "priority (the app lowers it by default)")
    parser.add_argument("--thread-compare", action="store_true",
                        help="also run the app with the engine on a thread of its own "
                             "process (ui.engine_process off), as before the engine "
                             "process")
    parser.add_argument("--verify-compare", action="store_true",
                        help="also run the app verifying drafts on every core (where it "
                             "spares one for the screen, from 8 cores)")
    parser.add_argument("--spare-compare", action="store_true",
                        help="also run the app decoding on one core fewer, as it does from "
                             "8 cores on, whatever the core count")
    parser.add_argument("--no-watching", action="store_true",
                        help="leave out the face app+watching: the app streaming while "
                             "nobody types (no key presses)")
    parser.add_argument("--face", choices=("ask", "app", "app-samepriority", "app-thread",
                                           "app-watching", "app-verifyall", "app-spare"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--json", metavar="FILE", help="also write the results here")
    args = parser.parse_args()
    if not args.model:  # the figures in docs/tui.md are Gemma 3 270M's
        from engine.model.bundled import bundled_model_path

        args.model = str(bundled_model_path("gemma3-270m"))
    if args.face:
        one_face(args)
        return

    argv = ["--tokens", str(args.tokens), "--ctx", str(args.ctx),
            "--key-every", str(args.key_every), "--face-timeout", str(args.face_timeout),
            "--ui-nice", str(args.ui_nice), "--gil-switch-ms", str(args.gil_switch_ms),
            "--speculative", args.speculative, "--stream-view", args.stream_view]
    if args.no_spare_core:
        argv.append("--no-spare-core")
    if args.threads:
        argv += ["--threads", str(args.threads)]
    if args.gpu_layers is not None:
        argv += ["--gpu-layers", str(args.gpu_layers)]
    if args.model:
        argv += ["--model", args.model]
    load_start = os.getloadavg()
    faces = ["ask", "app"] + ([] if args.no_watching else ["app+watching"]) \
        + (["ask+passive", "app+passive"] if args.omp_compare else []) \
        + (["app+samepriority"] if args.priority_compare else []) \
        + (["app+thread"] if args.thread_compare else []) \
        + (["app+verifyall"] if args.verify_compare else []) \
        + (["app+spare"] if args.spare_compare else [])
    rates: dict[str, list[float]] = {face: [] for face in faces}
    delays: dict[str, list[float]] = {face: [] for face in faces}
    drafts: dict[str, list[object]] = {face: [] for face in faces}
    # Per token, inside llama_decode and around it (sampling, drafting, the engine's
    # Python): whether a slower face lost its time in llama.cpp or outside it.
    split: dict[str, list[list[float]]] = {face: [] for face in faces}
    for rep in range(args.reps):
        # Rotate which face goes first, so drift on a shared machine hits all of them.
        order = faces[rep % len(faces):] + faces[:rep % len(faces)]
        for face in order:
            run = run_face(face, argv)
            rates[face].append(float(run["rate"]))
            delays[face].extend(run["key_delays"])  # type: ignore[arg-type]
            drafts[face].append([run.get("drafted"), run.get("accepted")])
            in_decode = around = float("nan")
            if run.get("decode_s") is not None and int(run["tokens"]) > 1:
                in_decode = float(run["decode_s"]) * 1000 / (int(run["tokens"]) - 1)
                around = 1000 / float(run["rate"]) - in_decode
                split[face].append([round(in_decode, 4), round(around, 4)])
            print(f"rep {rep + 1} {face}: {run['rate']:.2f} tok/s ({run['tokens']} tokens, "
                  f"{run.get('accepted')}/{run.get('drafted')} drafts accepted; per token "
                  f"{in_decode:.3f} ms in llama_decode, {around:.3f} ms around it)",
                  file=sys.stderr)

    result: dict[str, object] = {
        "prompt": PROMPT, "model": args.model or "bundled", "tokens": args.tokens,
        "n_ctx": args.ctx, "reps": args.reps, "ui_nice": args.ui_nice,
        "gil_switch_ms": args.gil_switch_ms, "spare_core": not args.no_spare_core,
        "speculative": args.speculative, "stream_view": args.stream_view,
        "threads": args.threads, "gpu_layers": args.gpu_layers, "cpu_count": os.cpu_count(),
        "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
    }
    if args.reps:
        ask = statistics.median(rates["ask"])
        print("app / ask, median of each rep's own ratio: " + ", ".join(
            f"{face} {statistics.median(r / b for r, b in zip(v, rates['ask'], strict=True)):.3f}"
            for face, v in rates.items() if face != "ask"), file=sys.stderr)
        result["tok_s"] = {face: spread(values) for face, values in rates.items()}
        result["over_ask"] = {face: statistics.median(values) / ask
                              for face, values in rates.items()}
        # Each rep's faces run back to back: the ratio within a rep leaves out the
        # drift between reps, which on a shared host is larger than the effect.
        result["over_ask_paired"] = {
            face: spread([rate / base for rate, base in zip(values, rates["ask"],
                                                             strict=True)])
            for face, values in rates.items() if face != "ask"}
        result["runs"] = rates
        result["drafted_accepted"] = drafts
        result["ms_per_token_in_and_around_decode"] = split
        result["key_delay_ms"] = {face: key_stats(values)
                                  for face, values in delays.items() if values}
    if not args.skip_long:
        result["long_reply"] = asyncio.run(long_reply(args))
        result["long_reply_source"] = asyncio.run(long_reply(args, source=True))
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


def key_stats(delays: list[float]) -> dict[str, float]:
    ordered = sorted(delays)
    return {**{k: v * 1000 for k, v in spread(delays).items()},
            "p95": ordered[int(0.95 * (len(ordered) - 1))] * 1000, "n": len(ordered)}


if __name__ == "__main__":
    main()
