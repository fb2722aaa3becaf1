"""``kvchat bench``: measured speed against raw llama-cpp-python (and llama.cpp's
llama-bench when given), with the memory-bandwidth ceiling. The measuring lives in
the ``bench`` package (``bench.run``); this is the face: options, progress, table, files."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bench.config import EXTRAS
from tui.cli import EXIT_OK


def add_bench_parser(commands: argparse._SubParsersAction, positive: object) -> None:
    bench = commands.add_parser(
        "bench", help="measure decode and prompt speed against llama.cpp",
        description="Measure prompt and decode tokens/s, time to first token and memory of "
                    "kvchat's engine against raw llama-cpp-python on the same model and "
                    "settings (and llama.cpp's llama-bench with --llama-bench), each run in a "
                    "fresh process, alternating, several repetitions; with the machine's "
                    "measured memory bandwidth and the decode ceiling it implies.")
    bench.add_argument("model", nargs="?", metavar="MODEL.gguf",
                       help="GGUF file (default: the bundled SmolLM2-135M-Instruct)")
    bench.add_argument("--shape", metavar="NAME:QUANT",
                       help="synthesize a built-in shape (random weights) and measure it, "
                            "e.g. llama-3.1-8b:Q4_K_M (written once to --models)")
    bench.add_argument("--models", metavar="DIR", help="where synthesized shapes are kept "
                                                       "(default: the user cache folder)")
    bench.add_argument("--json", action="store_true", help="print the report as JSON")
    bench.add_argument("--out", metavar="DIR",
                       help="write bench.json, bench.md and a chart (bench.svg) here")
    bench.add_argument("--quick", action="store_true",
                       help="a short run: 2 repetitions, 64 tokens, a 128-token prompt, no "
                            "profile")
    bench.add_argument("--reps", type=positive, metavar="N", help="repetitions (default 5)")
    bench.add_argument("--tokens", type=positive, metavar="N",
                       help="tokens decoded per repetition (default 256)")
    bench.add_argument("--prompt-tokens", type=positive, metavar="N",
                       help="about this many prompt tokens (default 512)")
    bench.add_argument("--ctx", type=positive, metavar="N", help="context size (default 4096)")
    bench.add_argument("--threads", type=positive, metavar="N",
                       help="CPU threads (default: one per core)")
    bench.add_argument("--gpu-layers", type=int, metavar="N",
                       help="layers on the GPU (default: as many as the memory plan fits)")
    bench.add_argument("--budget", metavar="SIZE", help="memory budget for the plan, e.g. 36GiB")
    bench.add_argument("--no-flash-attn", action="store_true", help="flash attention off")
    bench.add_argument("--llama-bench", metavar="PATH",
                       help="llama.cpp's llama-bench binary: a third anchor (its C++ loop)")
    bench.add_argument("--with", dest="extras", action="append", default=[],
                       choices=list(EXTRAS),
                       help="also run the repository's speculative-decoding, KV-eviction or "
                            "TUI-streaming benchmark (bundled model; minutes each on a CPU)")
    load = bench.add_argument_group(
        "under load", "--parallel measures N replies decoded together instead: aggregate "
                      "and per-reply decode tokens/s, time to first token, fairness, and a "
                      "long prompt joining the streams")
    load.add_argument("--parallel", type=_parallel_list, metavar="N,N,...",
                      help="e.g. 1,2,4,8: each N in a fresh process loaded with parallel N")
    load.add_argument("--kv-layout", choices=["shared", "split", "both"], default="shared",
                      help="the engine's KV layout under load: one pool of cells (shared), "
                           "ctx / N cells each (split), or both, each against "
                           "llama-batched-bench laid out alike")
    load.add_argument("--join-tokens", type=int, metavar="N",
                      help="prompt tokens of the reply joining N-1 streams (default 2000; "
                           "0: leave it out)")
    load.add_argument("--batched-bench", metavar="PATH",
                      help="llama.cpp's llama-batched-bench binary: the anchor under load "
                           "(benchmarks/batched_anchor.sh build prints it)")
    load.add_argument("--server-python", metavar="PATH",
                      help="a Python with llama-cpp-python's server extras: its server "
                           "answers the same concurrent requests")


def _parallel_list(value: str) -> tuple[int, ...]:
    try:
        out = tuple(int(part) for part in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 1,2,4,8, got {value!r}") \
            from None
    if not out or any(n < 1 for n in out):
        raise argparse.ArgumentTypeError(f"expected positive numbers like 1,2,4,8, got {value!r}")
    return tuple(dict.fromkeys(out))


def run_bench_command(args: argparse.Namespace) -> int:
    from bench.config import BenchConfig, check_config
    from bench.run import run_bench

    quick = args.quick
    config = BenchConfig(
        model=Path(args.model).expanduser() if args.model else None, shape=args.shape,
        models_dir=Path(args.models).expanduser() if args.models else None,
        tokens=args.tokens or (64 if quick else 256),
        prompt_tokens=args.prompt_tokens or (128 if quick else 512),
        reps=args.reps or (2 if quick else 5), n_ctx=args.ctx or (1024 if quick else 4096),
        n_threads=args.threads, n_gpu_layers=-1 if args.gpu_layers is None else args.gpu_layers,
        memory_budget=args.budget, flash_attn=not args.no_flash_attn,
        llama_bench=Path(args.llama_bench).expanduser() if args.llama_bench else None,
        profile=not quick, extras=tuple(args.extras),
        bandwidth_bytes=(1 << 28) if quick else (1 << 30), **_load_options(args))
    if config.parallel:
        config = _parallel_defaults(config, args)
        check_config(config)
        return _run_parallel(config, args)
    check_config(config)
    report = _with_progress(lambda progress: run_bench(config, progress))
    if args.out:
        _write_files(report, Path(args.out).expanduser())
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_table(report)
    return EXIT_OK


def _parallel_defaults(config: Any, args: argparse.Namespace) -> Any:
    """Under load the defaults are 128 prompt + 128 generated tokens a reply (32 with
    --quick), 3 repetitions, no profile, and a context just large enough (in steps of
    256 cells, at least 1024) unless --ctx says otherwise."""
    from dataclasses import replace

    from bench.config import cells_needed

    quick = args.quick
    config = replace(config, tokens=args.tokens or (32 if quick else 128),
                     prompt_tokens=args.prompt_tokens or 128,
                     reps=args.reps or (2 if quick else 3), profile=False)
    if args.ctx is None:
        config = replace(config, n_ctx=max(1024, -(-cells_needed(config) // 256) * 256))
    return config


def _load_options(args: argparse.Namespace) -> dict[str, Any]:
    if not args.parallel:
        return {}
    return {"parallel": args.parallel,
            "kv_layouts": ("shared", "split") if args.kv_layout == "both" else (args.kv_layout,),
            "join_tokens": 2000 if args.join_tokens is None else max(0, args.join_tokens),
            "batched_bench": Path(args.batched_bench).expanduser() if args.batched_bench
            else None,
            "server_python": Path(args.server_python).expanduser() if args.server_python
            else None}


def _run_parallel(config: Any, args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from bench.parallel import run_parallel
    from bench.parallel_report import COLUMNS, markdown, summary_lines, table_rows

    report = _with_progress(lambda progress: run_parallel(config, progress))
    if args.out:
        from engine.errors import ConfigError
        from engine.files.atomic import SHARED_FILE, atomic_write

        folder = Path(args.out).expanduser()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create {folder}: {exc.strerror or exc}") from None
        atomic_write(folder / "bench_parallel.json", json.dumps(report, indent=2) + "\n",
                     mode=SHARED_FILE)
        atomic_write(folder / "bench_parallel.md", markdown(report), mode=SHARED_FILE)
    if args.json:
        print(json.dumps(report, indent=2))
        return EXIT_OK
    run = report["run"]
    table = Table(title=f"{report['model']['name']} on {report['settings']['backend']}: "
                        f"{run['prompt_tokens']} prompt + {run['tokens']} tokens per reply, "
                        f"{run['reps']} reps, medians")
    for col in COLUMNS:
        table.add_column(col, justify="right")
    for row in table_rows(report):
        table.add_row(*row)
    console = Console()
    console.print(table)
    for line in summary_lines(report):
        console.print(line, highlight=False)
    return EXIT_OK


def _with_progress(work: Any) -> dict[str, Any]:
    """Run ``work(progress)`` under a rich progress bar on stderr (plain lines when
    stderr is not a terminal, so logs stay readable)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    console = Console(stderr=True)
    if not console.is_terminal:
        last = [""]

        def plain(stage: str, done: int, total: int) -> None:
            if stage != last[0]:
                last[0] = stage
                print(f"kvchat bench: {stage}", file=sys.stderr, flush=True)

        return work(plain)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  console=console, transient=True) as bar:
        tasks: dict[str, Any] = {}

        def progress(stage: str, done: int, total: int) -> None:
            key = "run" if stage.startswith("rep ") or stage == "measured" else stage
            if key not in tasks:
                tasks[key] = bar.add_task(stage, total=total)
            bar.update(tasks[key], description=stage, completed=done, total=total)

        return work(progress)


def _write_files(report: dict[str, Any], folder: Path) -> None:
    from bench.report import markdown, write_chart
    from engine.errors import ConfigError
    from engine.files.atomic import SHARED_FILE, atomic_write

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {folder}: {exc.strerror or exc}") from None
    atomic_write(folder / "bench.json", json.dumps(report, indent=2) + "\n", mode=SHARED_FILE)
    write_chart(report, folder / "bench.svg")
    atomic_write(folder / "bench.md", markdown(report, "bench.svg"), mode=SHARED_FILE)


def _print_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from bench.report import summary_lines, table_rows

    s, run = report["settings"], report["run"]
    table = Table(title=f"{report['model']['name']} on {s['backend']}: {run['prompt_tokens']} "
                        f"prompt + {run['tokens']} tokens, {run['reps']} reps, median [min-max]")
    for col in ("path", "decode tok/s", "prompt tok/s", "TTFT ms", "of ceiling"):
        table.add_column(col, justify="left" if col == "path" else "right")
    for row in table_rows(report):
        table.add_row(*row)
    console = Console()
    console.print(table)
    for line in summary_lines(report):
        console.print(line, highlight=False)
