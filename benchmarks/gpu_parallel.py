"""``kvchat bench --parallel``'s measurement on the GPU machine, with llama-batched-bench.

Run through ``benchmarks/gpu_parallel.sh`` (it builds llama.cpp with CUDA and
llama-batched-bench). Each case is ``SHAPE:QUANT[@LAYERS]=N,N,.../TOKENS[/CTX]`` (e.g.
``llama-3.1-8b:Q4_K_M=1,2,4,8,16/128`` or ``llama-3.1-70b:Q4_K_M@60=1,2,4/16/4096``); a
case starts only if the time left before ``--deadline`` (seconds from start) is at
least its ``--need``. ``--anchor-only`` runs llama-batched-bench alone (no kvchat
engine). Writes one JSON file per case under ``--out`` and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from bench.config import BenchConfig
from bench.parallel import batched_bench, run_parallel
from bench.parallel_report import COLUMNS, summary_lines, table_rows
from bench.run import plan_settings, resolve_model


def _config(case: str, args: argparse.Namespace) -> BenchConfig:
    spec, _, load = case.partition("=")
    shape, _, layers = spec.partition("@")
    counts, _, rest = load.partition("/")
    tokens, _, ctx = rest.partition("/")
    return BenchConfig(shape=shape, models_dir=args.models, reps=args.reps,
                       tokens=int(tokens or 128), prompt_tokens=args.prompt_tokens,
                       n_ctx=int(ctx or args.ctx), n_batch=2048, n_ubatch=512,
                       n_gpu_layers=int(layers) if layers else -1, bandwidth_bytes=1 << 30,
                       parallel=tuple(int(n) for n in counts.split(",")),
                       join_tokens=args.join_tokens if not layers else 0,
                       kv_layouts=("shared", "split") if args.kv_layout == "both"
                       else (args.kv_layout,),
                       batched_bench=args.batched_bench)


def _profile(config: BenchConfig) -> dict[str, object]:
    """Where a batch step's time goes at each N > 1 (one run each, timers in place),
    beside llama-batched-bench's step time at that N."""
    from dataclasses import asdict

    from bench.run import child

    model = resolve_model(config, _progress)
    _, settings = plan_settings(config, model, _progress)
    payload = {"settings": asdict(settings), "prompt_tokens": config.prompt_tokens,
               "tokens": config.tokens}
    rows: dict[str, dict[str, object]] = {}
    for layout in config.kv_layouts:
        anchor = batched_bench(config.batched_bench, settings, config,
                               unified=layout == "shared") if config.batched_bench else {}
        for n in (n for n in config.parallel if n > 1):
            row = child("profile", {**payload, "n": n, "kv_layout": layout},
                        module="bench.parallel_probe")
            if n in anchor:
                row["anchor_step_ms"] = 1e3 * n / anchor[n]["aggregate_tokens_per_s"]
            rows[f"{n} {layout}"] = row
            print(f"   N={n} {layout}: {row}", flush=True)
    return {"kind": "profile", "model": str(model), "rows": rows}


def _anchor_only(config: BenchConfig) -> dict[str, object]:
    model = resolve_model(config, _progress)
    _, settings = plan_settings(config, model, _progress)
    assert config.batched_bench is not None
    return {"kind": "batched-bench only", "model": str(model), "settings": settings.__dict__,
            "split": [batched_bench(config.batched_bench, settings, config)
                      for _ in range(config.reps)],
            "unified": [batched_bench(config.batched_bench, settings, config, unified=True)
                        for _ in range(config.reps)]}


_started = time.perf_counter()
_shown = [""]


def _progress(stage: str, done: int, total: int) -> None:
    if stage != _shown[0]:
        _shown[0] = stage
        print(f"  {time.perf_counter() - _started:6.0f} s  {stage}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", nargs="+")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batched-bench", type=Path, required=True)
    parser.add_argument("--models", type=Path, default=Path("/tmp/synth"))
    parser.add_argument("--deadline", type=float, default=560)
    parser.add_argument("--need", type=float, nargs="*", default=[])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--anchor-reps", type=int, nargs="*", default=[],
                        help="with --anchor-only: repetitions per case")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--ctx", type=int, default=16384)
    parser.add_argument("--join-tokens", type=int, default=2000)
    parser.add_argument("--kv-layout", choices=["shared", "split", "both"], default="both")
    parser.add_argument("--anchor-only", action="store_true")
    parser.add_argument("--profile", action="store_true",
                        help="time a batch step's parts at each N > 1 instead")
    args = parser.parse_args()
    args.models.mkdir(parents=True, exist_ok=True)
    for i, case in enumerate(args.cases):
        left = args.deadline - (time.perf_counter() - _started)
        need = args.need[i] if i < len(args.need) else 0
        if left < need:
            print(f"== {case}: skipped, {left:.0f} s left of the {need:.0f} s it needs")
            continue
        config = _config(case, args)
        if args.anchor_only and i < len(args.anchor_reps):
            config = replace(config, reps=args.anchor_reps[i])
        begun = time.perf_counter()
        try:
            report = (_anchor_only(config) if args.anchor_only else _profile(config)
                      if args.profile else run_parallel(config, _progress))
        except Exception as exc:  # record it, go on with the next case
            print(f"== {case}: failed: {type(exc).__name__}: {exc}")
            continue
        report["wall_s"] = time.perf_counter() - begun
        name = case.split("=")[0].replace(":", "_").replace("@", "_ngl")
        suffix = "_anchor" if args.anchor_only else "_profile" if args.profile else ""
        (args.out / f"parallel_{name}{suffix}.json").write_text(json.dumps(report, indent=1))
        print(f"== {case} ({report['wall_s']:.0f} s)")
        if args.profile:
            for n, row in report["rows"].items():  # type: ignore[attr-defined]
                print(f"   N={n}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()
                                               if isinstance(v, float)))
            continue
        if args.anchor_only:
            for key in ("split", "unified"):
                print(f"   {key}: " + ", ".join(
                    f"N={n} {row['aggregate_tokens_per_s']:.1f}"
                    for n, row in report[key][0].items()))  # type: ignore[index]
            continue
        print("   " + " | ".join(COLUMNS))
        for row in table_rows(report):
            print("   " + " | ".join(row))
        for line in summary_lines(report):
            print("   " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
