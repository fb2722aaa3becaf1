"""``kvchat bench``'s measurement on the GPU machine, shape by shape, with llama-bench.

Run through ``benchmarks/gpu_bench.sh`` (it builds llama.cpp and llama-bench with CUDA).
Each case is ``SHAPE:QUANT`` or ``SHAPE:QUANT@LAYERS`` (n_gpu_layers); a case starts only
if the time left before ``--deadline`` (seconds from start) looks enough for it. Writes
one JSON file per case under ``--out`` and prints the table and figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench.config import BenchConfig
from bench.report import summary_lines, table_rows
from bench.run import run_bench


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", nargs="+")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--llama-bench", type=Path, required=True)
    parser.add_argument("--models", type=Path, default=Path("/tmp/synth"))
    parser.add_argument("--deadline", type=float, default=560)
    parser.add_argument("--need", type=float, nargs="*", default=[],
                        help="seconds each case needs (skipped when less is left)")
    parser.add_argument("--reps", type=int, nargs="*", default=[])
    parser.add_argument("--tokens", type=int, default=256)
    args = parser.parse_args()
    started = time.perf_counter()
    shown = [""]

    def progress(stage: str, done: int, total: int) -> None:
        if stage != shown[0]:
            shown[0] = stage
            print(f"  {time.perf_counter() - started:6.0f} s  {stage}", flush=True)

    args.models.mkdir(parents=True, exist_ok=True)
    for i, case in enumerate(args.cases):
        left = args.deadline - (time.perf_counter() - started)
        need = args.need[i] if i < len(args.need) else 0
        if left < need:
            print(f"== {case}: skipped, {left:.0f} s left of the {need:.0f} s it needs")
            continue
        shape, _, layers = case.partition("@")
        config = BenchConfig(shape=shape, models_dir=args.models, llama_bench=args.llama_bench,
                             reps=args.reps[i] if i < len(args.reps) else 3,
                             tokens=args.tokens, n_gpu_layers=int(layers) if layers else -1,
                             bandwidth_bytes=1 << 30)
        case_start = time.perf_counter()
        try:
            report = run_bench(config, progress)
        except Exception as exc:  # record it, go on with the next case
            print(f"== {case}: failed: {type(exc).__name__}: {exc}")
            continue
        report["wall_s"] = time.perf_counter() - case_start
        name = case.replace(":", "_").replace("@", "_ngl")
        (args.out / f"bench_{name}.json").write_text(json.dumps(report, indent=1))
        print(f"== {case} ({report['wall_s']:.0f} s)")
        for row in table_rows(report):
            print("   " + " | ".join(row))
        for line in summary_lines(report):
            print("   " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
