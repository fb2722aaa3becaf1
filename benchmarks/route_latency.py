"""How long routing takes: the signals alone, per prompt, and the model fallback.

    .venv/bin/python benchmarks/route_latency.py [--fallback] [--repeat N]

Signals: every prompt of the labelled set routed ``--repeat`` times (after one warm-up
pass that pays for compiling the regular expressions and reading Pygments' alias
table); reports median, p95 and max per prompt, and a 1 MB prompt. With
``--fallback`` it loads the bundled model and times the model fallback (side-context
prefill plus the constrained answer) against a plain prefill of the same tokens in the
main context, on the same machine in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.routing.router import Router
from engine.routing.templates import load_templates
from tests.data.route_prompts import HELD_OUT, LABELLED


def _ms(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[int(0.95 * (len(ordered) - 1))]
    return (f"median {statistics.median(ordered):.3f} ms, p95 {p95:.3f} ms, "
            f"max {ordered[-1]:.3f} ms")


def signals(repeat: int) -> None:
    started = time.perf_counter()
    router = Router(load_templates())
    router.route("warm up:\ndef f(x):\n    return x\nprint(f(1))")
    print(f"first route (templates, regexes, Pygments table): "
          f"{(time.perf_counter() - started) * 1000:.1f} ms")
    prompts = [p for p, _ in LABELLED + HELD_OUT]
    times: list[float] = []
    for _ in range(repeat):
        for prompt in prompts:
            t0 = time.perf_counter()
            router.route(prompt)
            times.append((time.perf_counter() - t0) * 1000)
    print(f"signals, {len(prompts)} prompts x {repeat}: {_ms(times)}")
    big = "The quarterly report covers revenue, costs and outlook. " * 18_000
    t0 = time.perf_counter()
    decision = router.route(big)
    print(f"1 MB prompt ({len(big):,} chars): {(time.perf_counter() - t0) * 1000:.3f} ms "
          f"-> {decision.route}")


async def fallback(repeat: int) -> None:
    from engine.api import ChatMessage, ChatRequest
    from engine.backends.local import LocalEngine
    from engine.config import ModelConfig, SamplingConfig
    from engine.events import PromptEvaluated
    from engine.model.bundled import bundled_model_path

    templates = load_templates()
    names = templates.names
    descriptions = {n: templates.get(n).description for n in names}
    engine = LocalEngine(ModelConfig(path=bundled_model_path("gemma3-270m"), n_ctx=2048),
                         SamplingConfig(max_tokens=1, temperature=0.0))
    await engine.start()
    try:
        prompts = [p for p, _ in LABELLED[:: max(1, len(LABELLED) // repeat)]][:repeat]
        fb: list[float] = []
        plain: list[float] = []
        hits = 0
        labels = dict(LABELLED)
        for i, prompt in enumerate(prompts):
            answer = await engine.classify(prompt, names, descriptions)
            assert answer is not None
            fb.append(answer.elapsed_ms)
            hits += answer.route == labels[prompt]
            # The same number of tokens through the main context, for scale.
            filler = " ".join(["word"] * max(1, answer.prompt_tokens - 12))
            async for event in engine.chat(ChatRequest(
                    messages=(ChatMessage(role="user", content=f"{i} {filler}"),))):
                if isinstance(event, PromptEvaluated):
                    plain.append(event.prefill_s * 1000)
        print(f"model fallback, {len(prompts)} prompts: {_ms(fb)}")
        print(f"plain prefill of the same tokens in the main context: {_ms(plain)}")
        print(f"model fallback agreed with the label on {hits}/{len(prompts)}")
    finally:
        await engine.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--fallback", action="store_true", help="also time the model fallback")
    args = parser.parse_args()
    signals(args.repeat)
    if args.fallback:
        asyncio.run(fallback(args.repeat))
    return 0


if __name__ == "__main__":
    sys.exit(main())
