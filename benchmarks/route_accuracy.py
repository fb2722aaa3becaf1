"""Route the labelled prompt set and print accuracy, the confusion matrix and misses.

    .venv/bin/python benchmarks/route_accuracy.py [--misses] [--json]

The set is tests/data/route_prompts.py; the router runs on its signals alone (no
model fallback), with the bundled templates.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.routing.router import Router
from engine.routing.templates import BUILTIN_ROUTES, load_templates
from tests.data.route_prompts import FOLLOW_UPS, HELD_OUT, LABELLED

PromptSet = list[tuple[str, str]]


def evaluate(router: Router, prompts: PromptSet, follow_ups: dict[int, str] | None = None,
             ) -> tuple[float, dict[str, dict[str, int]], list[tuple]]:
    """Accuracy, the confusion matrix (expected -> routed -> count) and the misses."""
    matrix = {want: dict.fromkeys(BUILTIN_ROUTES, 0) for want in BUILTIN_ROUTES}
    misses = []
    for i, (prompt, want) in enumerate(prompts):
        decision = router.route(prompt, (follow_ups or {}).get(i))
        matrix[want][decision.route] += 1
        if decision.route != want:
            misses.append((prompt, want, decision))
    accuracy = 1 - len(misses) / len(prompts)
    return accuracy, matrix, misses


def format_matrix(matrix: dict[str, dict[str, int]]) -> str:
    width = max(len(r) for r in BUILTIN_ROUTES) + 2
    lines = ["expected \\ routed".ljust(18) + "".join(r.rjust(width) for r in BUILTIN_ROUTES)
             + "  recall".rjust(9)]
    for want in BUILTIN_ROUTES:
        row = matrix[want]
        total = sum(row.values())
        recall = row[want] / total if total else 0.0
        lines.append(want.ljust(18) + "".join(str(row[r]).rjust(width) for r in BUILTIN_ROUTES)
                     + f"{recall:9.0%}")
    precision = []
    for got in BUILTIN_ROUTES:
        col = sum(matrix[w][got] for w in BUILTIN_ROUTES)
        precision.append(f"{matrix[got][got] / col:.0%}" if col else "-")
    lines.append("precision".ljust(18) + "".join(p.rjust(width) for p in precision))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--misses", action="store_true", help="list the misrouted prompts")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args()
    router = Router(load_templates())
    prompts = LABELLED + HELD_OUT
    sets = {"labelled": evaluate(router, LABELLED, FOLLOW_UPS),
            "held_out": evaluate(router, HELD_OUT),
            "all": evaluate(router, prompts, FOLLOW_UPS)}
    if args.json:
        print(json.dumps({name: {"accuracy": acc, "matrix": matrix,
                                 "misses": [{"prompt": p[:120], "expected": w,
                                             "routed": d.route, "reason": d.reason}
                                            for p, w, d in misses]}
                          for name, (acc, matrix, misses) in sets.items()}, indent=2))
        return 0
    for name, size in (("labelled", len(LABELLED)), ("held_out", len(HELD_OUT))):
        acc, _, misses = sets[name]
        print(f"{name}: {size} prompts, accuracy {acc:.1%} ({len(misses)} wrong)")
    accuracy, matrix, misses = sets["all"]
    print(f"all: {len(prompts)} prompts, accuracy {accuracy:.1%}\n")
    print(format_matrix(matrix))
    if args.misses:
        print()
        for prompt, want, d in misses:
            short = " ".join(prompt.split())[:90]
            print(f"- expected {want}, routed {d.route} ({d.confidence:.2f}): {short}\n"
                  f"    {d.reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
