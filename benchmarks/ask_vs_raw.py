"""Decode speed of kvchat's engine against raw llama-cpp-python, in one run.

Same model, same context, threads and batch size, greedy, the same prompt, exactly
N generated tokens each (end-of-turn banned). Each measurement runs in a fresh
process: llama.cpp's OpenMP worker threads keep spinning after a decode, so a second
llama.cpp caller in the same process (here, another thread) would be measured
against the first one's idle spinners. Runs alternate (raw, engine, CLI, raw, ...) so
machine noise hits all alike; the median and the spread are reported, with the
memory-bandwidth ceiling: bandwidth / bytes of weights read per token.

    .venv/bin/python benchmarks/ask_vs_raw.py [--model PATH] [--tokens 256] [--reps 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PROMPT = "Write a long story about a lighthouse keeper and the sea."


def measure_bandwidth(n_bytes: int = 1 << 30, reps: int = 5) -> float:
    """Best-of copy bandwidth in bytes/s, counting read + write."""
    src = np.ones(n_bytes // 8, dtype=np.float64)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    return 2 * n_bytes / best


def raw_decode(model: str, n_ctx: int, n_threads: int, n_batch: int, tokens: int) -> float:
    """llama-cpp-python's own generate loop, timed from first to last token."""
    import llama_cpp

    llm = llama_cpp.Llama(model, n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads,
                          n_batch=n_batch, n_ubatch=min(n_batch, 512), verbose=False)
    prompt = llm.tokenize(f"<start_of_turn>user\n{PROMPT}<end_of_turn>\n"
                          "<start_of_turn>model\n".encode(), add_bos=True, special=True)
    eog = [t for t in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(llm._model.vocab, t)]

    def ban_eog(_ids, logits):
        logits[eog] = -np.inf
        return logits

    stamps = []
    for _token in llm.generate(prompt, temp=0.0, top_k=1,
                               logits_processor=llama_cpp.LogitsProcessorList([ban_eog])):
        stamps.append(time.perf_counter())
        if len(stamps) == tokens:
            break
    llm.close()
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


async def engine_decode(model: str, n_ctx: int, n_threads: int, n_batch: int,
                        tokens: int) -> tuple[float, float]:
    """kvchat's engine: its own measured rate, and the rate a consumer sees."""
    from engine.chat_format import ChatMessage
    from engine.config import ModelConfig, SamplingConfig
    from engine.events import Done, TokenChunk
    from engine.local_engine import LocalEngine

    eng = LocalEngine(ModelConfig(path=model, n_ctx=n_ctx, n_threads=n_threads,
                                  n_batch=n_batch))
    await eng.start()
    sampling = SamplingConfig(temperature=0.0, max_tokens=tokens)
    first = last = 0.0
    done = None
    async for event in eng.chat([ChatMessage(role="user", content=PROMPT)], sampling,
                                ignore_eos=True):
        if isinstance(event, TokenChunk):
            last = time.perf_counter()
            first = first or last
        elif isinstance(event, Done):
            done = event
    await eng.close()
    assert done is not None and done.completion_tokens == tokens
    return done.tokens_per_s, (tokens - 1) / (last - first)


def cli_decode(model: str, n_ctx: int, tokens: int) -> float:
    """`kvchat ask --events jsonl` end to end; the rate from its done event."""
    exe = Path(sys.executable).with_name("kvchat")
    out = subprocess.run([str(exe), "ask", "--events", "jsonl", "--model", model, "--ctx",
                          str(n_ctx), "--temp", "0", "--ignore-eos", "--max-tokens", str(tokens),
                          PROMPT], capture_output=True, text=True, check=True).stdout
    done = json.loads(out.strip().splitlines()[-1])
    return done["tokens_per_s"]


def in_subprocess(kind: str, model: str, n_ctx: int, tokens: int) -> list[float]:
    out = subprocess.run([sys.executable, __file__, "--one", kind, "--model", model,
                          "--ctx", str(n_ctx), "--tokens", str(tokens)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def one(kind: str, model: str, n_ctx: int, tokens: int) -> list[float]:
    from engine.loader import default_threads

    threads, batch = default_threads(), 512
    if kind == "raw":
        return [raw_decode(model, n_ctx, threads, batch, tokens)]
    return list(asyncio.run(engine_decode(model, n_ctx, threads, batch, tokens)))


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> None:
    from engine.gguf_header import read_gguf_header
    from engine.loader import bundled_model_path, default_threads

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--ctx", type=int, default=4096)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--one", choices=["raw", "engine"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    model = str(args.model or bundled_model_path())
    if args.one:
        print(json.dumps(one(args.one, model, args.ctx, args.tokens)))
        return
    threads = default_threads()
    header = read_gguf_header(model)

    raw, eng_inside, eng_seen, cli = [], [], [], []
    for rep in range(args.reps):
        raw.extend(in_subprocess("raw", model, args.ctx, args.tokens))
        inside, seen = in_subprocess("engine", model, args.ctx, args.tokens)
        eng_inside.append(inside)
        eng_seen.append(seen)
        cli.append(cli_decode(model, args.ctx, args.tokens))
        print(f"rep {rep + 1}/{args.reps}: raw {raw[-1]:.1f}  engine {inside:.1f} "
              f"(consumer {seen:.1f})  kvchat ask {cli[-1]:.1f} tok/s", file=sys.stderr)

    bandwidth = measure_bandwidth()
    ceiling = bandwidth / header.weights_bytes
    ratios = [e / r for e, r in zip(eng_inside, raw, strict=True)]
    cli_ratios = [c / r for c, r in zip(cli, raw, strict=True)]
    report = {
        "model": header.name, "weights_bytes": header.weights_bytes, "threads": threads,
        "n_ctx": args.ctx, "tokens": args.tokens, "reps": args.reps,
        "raw_llama_cpp_python": summary(raw), "engine": summary(eng_inside),
        "engine_as_consumed": summary(eng_seen), "kvchat_ask": summary(cli),
        "engine_vs_raw": summary(ratios), "ask_vs_raw": summary(cli_ratios),
        "bandwidth_gb_s": bandwidth / 1e9, "ceiling_tok_s": ceiling,
        "raw_fraction_of_ceiling": statistics.median(raw) / ceiling,
        "engine_fraction_of_ceiling": statistics.median(eng_inside) / ceiling,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"\n{header.name}, {args.tokens} tokens greedy, {threads} threads, "
          f"{args.reps} reps (median [min-max] tok/s)")
    for name, key in [("raw llama-cpp-python", "raw_llama_cpp_python"),
                      ("kvchat engine", "engine"), ("  as consumed", "engine_as_consumed"),
                      ("kvchat ask (CLI)", "kvchat_ask")]:
        s = report[key]
        print(f"  {name:22} {s['median']:7.1f}  [{s['min']:.1f}-{s['max']:.1f}]")
    print(f"  engine / raw           {report['engine_vs_raw']['median']:.3f}x  "
          f"[{report['engine_vs_raw']['min']:.3f}-{report['engine_vs_raw']['max']:.3f}]")
    print(f"  ask / raw              {report['ask_vs_raw']['median']:.3f}x")
    print(f"  copy bandwidth {report['bandwidth_gb_s']:.1f} GB/s (read+write) -> ceiling "
          f"{ceiling:.0f} tok/s; raw reaches {report['raw_fraction_of_ceiling']:.0%}, "
          f"engine {report['engine_fraction_of_ceiling']:.0%}")


if __name__ == "__main__":
    main()
