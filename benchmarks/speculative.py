"""Speculative decoding against plain decoding on the same model, greedy, in one run.

Three tasks: a repetitive one (repeat a Python file with a function renamed: prompt
lookup's best case), a free-form story, and the same story under a repeat penalty over
the whole reply (no repeats: the off switch must keep the loss small). Each measurement
runs in a fresh process, alternating plain and speculative, because llama.cpp's OpenMP
threads keep spinning after a decode and would slow a second measurement in the same
process. Reports the median decode tokens/s of
each mode, their ratio, the acceptance rate, and whether the outputs are identical.

    .venv/bin/python benchmarks/speculative.py [--tokens 400] [--reps 3]
        [--model PATH] [--gpu-layers N] [--draft-model PATH] [--temperature T --seed S]
        [--mode auto|prompt-lookup|draft] [--batch-invariant auto|on|off] [--json FILE]

``--model`` defaults to the bundled Gemma 3 270M; ``--gpu-layers`` to the memory
plan's choice (all layers where they fit). ``--mode`` defaults to what a reply gets by
default (auto), or draft with ``--draft-model``. Both modes load the model the same way
(``--batch-invariant``, auto resolving as the speculative run would), so a difference in
output comes from speculation, not from the KV cache type.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SOURCE = ROOT / "engine" / "decode" / "kv_window.py"  # about 60 lines of real Python


def tasks() -> dict[str, str]:
    code = SOURCE.read_text()
    return {
        "repetitive": "Repeat this Python file exactly, with the function `window` renamed "
                      f"to `cache_window`:\n\n```python\n{code}```",
        "free-form": STORY,
        "no-repeats": STORY,
    }


STORY = "Write a long, original story about a lighthouse keeper who finds a message in a bottle."

PENALTIES = {"no-repeats": {"repeat_penalty": 1.3, "repeat_last_n": 1024}}
"""Greedy decoding of this small base model falls into loops on both tasks above (which
prompt lookup drafts well); a repeat penalty over the whole reply keeps the story from
repeating itself, so drafts mostly miss and the off switch has to keep the loss small."""


async def measure(task: str, mode: str, tokens: int, draft: str | None,
                  model: str | None = None, gpu_layers: int = -1,
                  temperature: float = 0.0, seed: int = 0, invariant: str = "off") -> dict:
    from engine.api import ChatMessage, ChatRequest
    from engine.backends.local import LocalEngine
    from engine.config import KVCacheConfig, ModelConfig, SamplingConfig, SpeculativeConfig
    from engine.model.bundled import bundled_model_path

    spec = SpeculativeConfig(mode=mode, draft_model=Path(draft) if draft else None)
    path = Path(model) if model else bundled_model_path("gemma3-270m")
    eng = LocalEngine(ModelConfig(path=path, n_ctx=4096,
                                  n_gpu_layers=gpu_layers, batch_invariant=invariant),
                      SamplingConfig(temperature=temperature, seed=seed, max_tokens=tokens,
                                     **PENALTIES.get(task, {})),
                      KVCacheConfig(), spec)
    await eng.start()
    out: list[int] = []
    done = None
    try:
        async for event in eng.chat(ChatRequest(
                messages=(ChatMessage(role="user", content=tasks()[task]),),
                ignore_eos=True)):
            if event.type == "token":
                out.extend(event.token_ids)
            elif event.type == "done":
                done = event
    finally:
        await eng.close()
    assert done is not None
    return {"tokens_per_s": done.tokens_per_s, "tokens": out, "text": done.text,
            "drafted": done.drafted_tokens, "accepted": done.accepted_tokens,
            "prefill_tokens_per_s": done.prefill_tokens_per_s}


def first_difference(a: list[int], b: list[int]) -> int | None:
    """The first index where two token lists differ (None when equal)."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def run_child(task: str, mode: str, tokens: int, draft: str | None,
              model: str | None, gpu_layers: int, temperature: float = 0.0,
              seed: int = 0, invariant: str = "off") -> dict:
    cmd = [sys.executable, __file__, "--child", task, mode, "--tokens", str(tokens),
           "--gpu-layers", str(gpu_layers), "--temperature", str(temperature),
           "--seed", str(seed), "--batch-invariant", invariant]
    if draft:
        cmd += ["--draft-model", draft]
    if model:
        cmd += ["--model", model]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=400)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--draft-model", metavar="PATH")
    parser.add_argument("--model", metavar="PATH")
    parser.add_argument("--gpu-layers", type=int, default=-1)
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mode", choices=["auto", "prompt-lookup", "draft"])
    parser.add_argument("--batch-invariant", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--child", nargs=2, metavar=("TASK", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = asyncio.run(measure(*args.child, args.tokens, args.draft_model,
                                     args.model, args.gpu_layers, args.temperature,
                                     args.seed, args.batch_invariant))
        print(json.dumps(result))
        return 0
    spec_mode = args.mode or ("draft" if args.draft_model else "auto")
    invariant = args.batch_invariant
    if invariant == "auto":  # as the speculative run's engine would resolve it
        from engine.model.loader import has_gpu

        invariant = "off" if has_gpu() and args.gpu_layers != 0 else "on"
    report = {}
    for task in tasks():
        runs: dict[str, list[dict]] = {"off": [], spec_mode: []}
        for rep in range(args.reps):
            for mode in runs:
                runs[mode].append(run_child(task, mode, args.tokens, args.draft_model,
                                            args.model, args.gpu_layers,
                                            args.temperature, args.seed, invariant))
                print(f"{task} rep {rep + 1} {mode}: "
                      f"{runs[mode][-1]['tokens_per_s']:.1f} tok/s", file=sys.stderr)
        plain = [r["tokens_per_s"] for r in runs["off"]]
        spec = [r["tokens_per_s"] for r in runs[spec_mode]]
        drafted = sum(r["drafted"] for r in runs[spec_mode])
        accepted = sum(r["accepted"] for r in runs[spec_mode])
        report[task] = {
            "plain_tokens_per_s": statistics.median(plain),
            "spec_tokens_per_s": statistics.median(spec),
            "ratio": statistics.median(spec) / statistics.median(plain),
            "ratio_range": [min(spec) / max(plain), max(spec) / min(plain)],
            "acceptance": accepted / drafted if drafted else 0.0,
            "plain_prefill_tokens_per_s": statistics.median(r["prefill_tokens_per_s"] or 0.0
                                                     for r in runs["off"]),
            "drafted_per_reply": drafted / args.reps,
            "spec_text_head": runs[spec_mode][0]["text"][:400],
            "identical": all(r["tokens"] == runs["off"][0]["tokens"]
                             for r in runs["off"] + runs[spec_mode]),
            # Plain runs agree with each other (the backend is deterministic), and where
            # the first speculative run leaves the plain output, if it does.
            "plain_runs_identical": all(r["tokens"] == runs["off"][0]["tokens"]
                                        for r in runs["off"]),
            "first_difference": first_difference(runs["off"][0]["tokens"],
                                                 runs[spec_mode][0]["tokens"]),
        }
    print(f"{'task':<12} {'plain tok/s':>11} {spec_mode + ' tok/s':>19} {'ratio':>6} "
          f"{'acceptance':>10}  identical")
    for task, r in report.items():
        print(f"{task:<12} {r['plain_tokens_per_s']:>11.1f} {r['spec_tokens_per_s']:>19.1f} "
              f"{r['ratio']:>5.2f}x {r['acceptance']:>10.0%}  {r['identical']}")
    if args.json:
        report["settings"] = {"tokens": args.tokens, "reps": args.reps, "mode": spec_mode,
                              "temperature": args.temperature, "seed": args.seed,
                              "batch_invariant": invariant}
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
