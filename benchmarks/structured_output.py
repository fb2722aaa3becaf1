"""How the retry ladder does on the bundled model: 30 requests for JSON against 10
schemas, each through ChatSession with a real SQLite store, greedy sampling, the default
ladder (the reply as generated, a repair, a stricter prompt, then a grammar).

Reports the share of requests settled at each step, the mean number of attempts, and
whether every final output parses and validates (or is marked failed).

    .venv/bin/python benchmarks/structured_output.py [--out benchmarks/results/x.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.backends.local import LocalEngine
from engine.config import KvchatConfig, ModelConfig, SamplingConfig
from engine.events import Done, OutputCheck
from engine.model.bundled import bundled_model_path
from engine.routing.service import RouteService
from engine.session import ChatSession
from engine.store import Store
from engine.structured.checks import check_output
from engine.structured.spec import OutputSpec

STR, INT, NUM = {"type": "string", "maxLength": 60}, {"type": "integer"}, {"type": "number"}


def obj(props: dict, required: list[str] | None = None) -> dict:
    return {"type": "object", "properties": props,
            "required": required if required is not None else list(props),
            "additionalProperties": False}


SCHEMAS: dict[str, tuple[dict, list[str]]] = {
    "person": (obj({"name": STR, "age": {"type": "integer", "minimum": 0}}),
               ["Describe Ada Lovelace: her name and the age she died at.",
                "Give a made-up person with a name and an age.",
                "Who wrote Hamlet, and how old was he when he died?"]),
    "book": (obj({"title": STR, "author": STR, "year": INT}),
             ["Name a classic novel with its author and year.",
              "Recommend one science fiction book.",
              "What is the title, author and year of Moby-Dick?"]),
    "city": (obj({"city": STR, "country": STR, "population": INT}),
             ["Tell me about Paris.", "Give the largest city in Japan.",
              "Describe a city in Brazil."]),
    "recipe": (obj({"dish": STR, "ingredients": {"type": "array", "items": STR,
                                               "minItems": 2, "maxItems": 8}}),
               ["A simple pancake recipe.", "What goes into a tomato salad?",
                "Ingredients for a cup of tea."]),
    "todo": (obj({"tasks": {"type": "array", "maxItems": 5,
                            "items": obj({"task": STR, "done": {"type": "boolean"}})}}),
             ["Make a to-do list for moving house.", "Three chores for Saturday.",
              "Plan my morning routine."]),
    "weather": (obj({"city": STR, "condition": {"enum": ["sunny", "cloudy", "rain", "snow"]},
                     "celsius": NUM}),
                ["What is the weather like in London today?",
                 "Describe a winter day in Oslo.", "Weather report for a beach town."]),
    "product": (obj({"name": STR, "price": {"type": "number", "minimum": 0},
                     "in_stock": {"type": "boolean"}}),
                ["Describe a laptop for sale.", "A coffee mug in a shop.",
                 "List one product from a bakery."]),
    "color": (obj({"name": STR, "hex": {"type": "string", "pattern": "^#[0-9a-f]{6}$"}}),
              ["What is the hex code of pure red?", "Name a shade of blue.",
               "Give me a pastel colour."]),
    "review": (obj({"movie": STR, "rating": {"type": "integer", "minimum": 1, "maximum": 5},
                    "summary": STR}),
               ["Review the film Titanic.", "Rate a comedy you like.",
                "Write a short review of a horror movie."]),
    "event": (obj({"event": STR, "year": INT, "place": STR}),
              ["When and where did the first moon landing happen?",
               "Describe a famous battle.", "An important event in 1989."]),
}

STEPS = ("as_generated", "repair", "stricter_prompt", "grammar", "failed")


async def run(n_ctx: int, max_tokens: int) -> dict:
    engine = LocalEngine(ModelConfig(path=bundled_model_path("gemma3-270m"), n_ctx=n_ctx),
                         SamplingConfig(temperature=0.0))
    await engine.start()
    sampling = SamplingConfig(temperature=0.0, max_tokens=max_tokens)
    results = []
    with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp) / "bench.db") as store:
        session = ChatSession(engine, store, "", routes=RouteService.from_config(KvchatConfig()))
        for name, (schema, prompts) in SCHEMAS.items():
            spec = OutputSpec(format="json", schema=schema)
            for prompt in prompts:
                started = time.perf_counter()
                checks: list[OutputCheck] = []
                done: Done | None = None
                # Pinned: the route's template must not raise max_tokens or the temperature.
                async for event in session.send(prompt, sampling=sampling, output=spec,
                                                pinned=("max_tokens", "temperature")):
                    if isinstance(event, OutputCheck):
                        checks.append(event)
                    elif isinstance(event, Done):
                        done = event
                assert done is not None
                valid = check_output(done.text, spec).ok
                settled = checks[-1].strategy if done.output_ok else "failed"
                results.append({"schema": name, "prompt": prompt, "attempts": done.attempts,
                                "settled_by": settled, "output_ok": done.output_ok,
                                "rechecked_valid": valid,
                                "seconds": round(time.perf_counter() - started, 2),
                                "first_error": checks[0].errors[0] if checks[0].errors else ""})
                print(f"{name:8} {settled:16} attempts={done.attempts} "
                      f"{results[-1]['seconds']:6.2f}s  {prompt[:50]}", file=sys.stderr)
    await engine.close()
    counts = Counter(r["settled_by"] for r in results)
    honest = all(r["rechecked_valid"] == bool(r["output_ok"]) for r in results)
    return {
        "requests": len(results), "schemas": len(SCHEMAS), "max_tokens": max_tokens,
        "share_settled_by": {s: round(counts.get(s, 0) / len(results), 3) for s in STEPS},
        "count_settled_by": {s: counts.get(s, 0) for s in STEPS},
        "mean_attempts": round(statistics.mean(r["attempts"] for r in results), 2),
        "every_final_valid_or_marked_failed": honest,
        "results": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ctx", type=int, default=2048)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    report = asyncio.run(run(args.ctx, args.max_tokens))
    summary = {k: v for k, v in report.items() if k != "results"}
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
