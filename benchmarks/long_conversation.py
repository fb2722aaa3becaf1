"""A long conversation through a small context: does kvchat stay fast and flat?

Drives one conversation (through ChatSession and a real SQLite store, as the apps do)
until at least ``--tokens`` reply tokens have been generated through an ``--ctx``
context, every reply ``--reply`` tokens long (end-of-turn banned). Reports:

- evictions, and the slowest one: llama.cpp's seq_rm + seq_add bookkeeping plus the
  decode right after it, which applies the deferred RoPE shift to every shifted cell;
- the baseline an eviction avoids, measured in the same run: evaluating the whole
  window again from an empty cache (what a client without in-place shifting does);
- decode tokens/s in the first and the last tenth of the tokens (per-token intervals
  inside replies, taken from the engine thread's event timestamps, evictions included);
- resident memory after the first tenth and at the end.

    .venv/bin/python benchmarks/long_conversation.py [--tokens 50000] [--ctx 2048]
        [--reply 1000] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.backends.local import LocalEngine  # noqa: E402
from engine.config import KVCacheConfig, ModelConfig, SamplingConfig  # noqa: E402
from engine.decode.generator import Generator  # noqa: E402
from engine.events import Done, Error, Eviction, TokenChunk  # noqa: E402
from engine.model.bundled import bundled_model_path  # noqa: E402
from engine.session import ChatSession  # noqa: E402
from engine.store import Store  # noqa: E402

SYSTEM = "You are a storyteller. Keep the story going, one long chapter at a time."


def resident_bytes() -> int:
    """Current resident set size (Linux /proc; macOS falls back to the peak)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


@dataclass
class Run:
    stamps: list[tuple[int, float, int]] = field(default_factory=list)
    """(turn, engine-side timestamp, tokens in the chunk) per token event."""
    evictions: list[Eviction] = field(default_factory=list)
    rss: list[tuple[int, int]] = field(default_factory=list)
    """(tokens so far, resident bytes) after each turn."""
    turns: int = 0
    errors: list[str] = field(default_factory=list)


def tenth_rates(stamps: list[tuple[int, float, int]]) -> tuple[float, float]:
    """Decode tokens/s over the first and the last tenth of the tokens."""
    intervals: list[tuple[float, int]] = []  # (seconds since the previous token, tokens)
    for (turn_a, ts_a, _), (turn_b, ts_b, n_b) in itertools.pairwise(stamps):
        if turn_a == turn_b:
            intervals.append((ts_b - ts_a, n_b))
    tenth = max(1, len(intervals) // 10)

    def rate(part: list[tuple[float, int]]) -> float:
        return sum(n for _, n in part) / sum(s for s, _ in part)

    return rate(intervals[:tenth]), rate(intervals[-tenth:])


async def reevaluate_window(engine: LocalEngine, reps: int = 3) -> tuple[float, int]:
    """Seconds to evaluate the current window again from nothing (median), and its size.

    Runs on the engine thread, which owns the llama context; the cache ends as it began.
    """
    def measure(gen: Generator) -> tuple[float, int]:
        tokens = list(gen.cache.state.tokens)
        times = []
        for _ in range(reps):
            gen.cache.rewind(0)
            started = time.perf_counter()
            gen.prefill(tokens, threading.Event())
            times.append(time.perf_counter() - started)
        return statistics.median(times), len(tokens)

    return await engine.run_on_engine_thread(measure)


async def converse(args: argparse.Namespace, store: Store) -> tuple[Run, LocalEngine]:
    engine = LocalEngine(ModelConfig(path=bundled_model_path("gemma3-270m"), n_ctx=args.ctx),
                         SamplingConfig(temperature=0.8, seed=7, max_tokens=args.reply),
                         KVCacheConfig())
    await engine.start()
    session = ChatSession(engine, store, SYSTEM)
    run, produced, conversation = Run(), 0, None
    while produced < args.tokens:
        run.turns += 1
        prompt = "Tell me a long story." if run.turns == 1 else \
            f"Go on with chapter {run.turns}."
        async for event in session.send(prompt, conversation, ignore_eos=True):
            if event.type == "turn_started":
                conversation = event.conversation_id
            elif isinstance(event, TokenChunk):
                run.stamps.append((run.turns, event.ts, len(event.token_ids)))
            elif isinstance(event, Eviction):
                run.evictions.append(event)
            elif isinstance(event, Done):
                produced += event.completion_tokens
            elif isinstance(event, Error):
                run.errors.append(f"{event.code}: {event.message}")
        run.rss.append((produced, resident_bytes()))
        print(f"turn {run.turns}: {produced}/{args.tokens} tokens, "
              f"{len(run.evictions)} evictions", file=sys.stderr, flush=True)
        if run.errors:
            break
    return run, engine


def report(args: argparse.Namespace, run: Run, baseline_s: float, window: int) -> dict:
    costs = [e.elapsed_s + e.shift_s for e in run.evictions]
    first, last = tenth_rates(run.stamps)
    total = run.rss[-1][0]
    rss_start = next(rss for produced, rss in run.rss if produced >= total / 10)
    rss_end = run.rss[-1][1]
    return {
        "ctx": args.ctx, "reply_tokens": args.reply, "turns": run.turns,
        "tokens": total, "errors": run.errors,
        "evictions": len(run.evictions),
        "evicted_tokens": sum(e.evicted_tokens for e in run.evictions),
        "at_turn_boundary": sum(e.at_turn_boundary for e in run.evictions),
        "eviction_cost_median_s": statistics.median(costs) if costs else 0.0,
        "eviction_cost_max_s": max(costs, default=0.0),
        "bookkeeping_max_s": max((e.elapsed_s for e in run.evictions), default=0.0),
        # A prompt eviction's shift is paid in a prefill chunk, which also evaluates the
        # new message: its cost overstates the eviction's own.
        "generation_eviction_max_s": max((e.elapsed_s + e.shift_s for e in run.evictions
                                          if e.reason == "generation"), default=0.0),
        "prompt_eviction_max_s": max((e.elapsed_s + e.shift_s for e in run.evictions
                                      if e.reason == "prompt"), default=0.0),
        "reevaluate_window_s": baseline_s, "reevaluate_window_tokens": window,
        "slowest_eviction_vs_reevaluation": max(costs, default=0.0) / baseline_s,
        "tokens_per_s_first_tenth": first, "tokens_per_s_last_tenth": last,
        "last_over_first": last / first,
        "rss_after_first_tenth": rss_start, "rss_end": rss_end,
        "rss_end_over_start": rss_end / rss_start,
    }


def print_table(r: dict) -> None:
    mib = 1 << 20
    print(f"{r['tokens']} tokens in {r['turns']} turns through a {r['ctx']}-cell context"
          f"{'; errors: ' + '; '.join(r['errors']) if r['errors'] else ', no error'}")
    print(f"evictions            {r['evictions']} ({r['evicted_tokens']} tokens, "
          f"{r['at_turn_boundary']} at a turn boundary)")
    print(f"eviction cost        median {r['eviction_cost_median_s'] * 1e3:.1f} ms, "
          f"slowest {r['eviction_cost_max_s'] * 1e3:.1f} ms (bookkeeping at most "
          f"{r['bookkeeping_max_s'] * 1e3:.2f} ms); slowest during a reply "
          f"{r['generation_eviction_max_s'] * 1e3:.1f} ms, before one (with its prefill) "
          f"{r['prompt_eviction_max_s'] * 1e3:.1f} ms")
    print(f"re-evaluating window {r['reevaluate_window_s'] * 1e3:.0f} ms for "
          f"{r['reevaluate_window_tokens']} tokens: slowest eviction = "
          f"{r['slowest_eviction_vs_reevaluation']:.3f}x of it")
    print(f"decode tokens/s      first tenth {r['tokens_per_s_first_tenth']:.1f}, last tenth "
          f"{r['tokens_per_s_last_tenth']:.1f} ({r['last_over_first']:.3f}x)")
    print(f"resident memory      {r['rss_after_first_tenth'] / mib:.1f} MiB after the first "
          f"tenth, {r['rss_end'] / mib:.1f} MiB at the end ({r['rss_end_over_start']:.3f}x)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=50_000)
    parser.add_argument("--ctx", type=int, default=2048)
    parser.add_argument("--reply", type=int, default=1000)
    parser.add_argument("--json", metavar="FILE", help="also write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "bench.db")

        async def go() -> dict:
            run, engine = await converse(args, store)
            try:
                baseline, window = await reevaluate_window(engine)
            finally:
                await engine.close()
            return report(args, run, baseline, window)

        result = asyncio.run(go())
        store.close()
    print_table(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
