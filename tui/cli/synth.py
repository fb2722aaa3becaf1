"""``kvchat synth``: write a synthetic GGUF of a built-in shape (random weights, real
tensor names, shapes and quant types) that llama.cpp loads and runs."""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from tui.cli import EXIT_OK

# Listed here so --help needs no engine import; engine.model.memory.shapes.SHAPES is the source.
SHAPE_NAMES = ("llama-3.1-8b", "llama-3.1-70b", "llama-3.2-1b", "llama-3.2-3b", "llama-2-7b",
               "llama-2-13b", "gemma-3-270m", "tiny-llama")

GiB = 1024**3


def add_synth_parser(commands: argparse._SubParsersAction, non_negative: object) -> None:
    synth = commands.add_parser(
        "synth", help="write a synthetic GGUF of a built-in shape",
        description="Write a GGUF with the tensor names, shapes and quant types of a real "
                    "model and random weights, for planning and speed checks. Shapes: "
                    + ", ".join(SHAPE_NAMES) + ".")
    synth.add_argument("shape", metavar="NAME:QUANT", help="e.g. llama-3.1-8b:Q4_K_M")
    synth.add_argument("-o", "--output", metavar="FILE.gguf", required=True)
    synth.add_argument("--seed", type=non_negative, default=0, metavar="S")
    synth.add_argument("--force", action="store_true", help="overwrite an existing file")


def run_synth(args: argparse.Namespace) -> int:
    from engine.errors import ConfigError
    from engine.model.memory.shapes import parse_shape, shape_header
    from engine.model.memory.synth import write_synthetic

    shape, mix = parse_shape(args.shape)
    path = Path(args.output).expanduser()
    if path.exists() and not args.force:
        raise ConfigError(f"{path} exists; pass --force to overwrite it")
    if not path.parent.exists():
        raise ConfigError(f"folder {path.parent} does not exist")
    need = shape_header(shape, mix).file_bytes
    free = shutil.disk_usage(path.parent).free + (path.stat().st_size if path.exists() else 0)
    if need > free:
        raise ConfigError(f"{shape.name}:{mix.name} needs {need / GiB:.2f} GiB; "
                          f"{path.parent} has {free / GiB:.2f} GiB free")
    started = time.perf_counter()
    tty = sys.stderr.isatty()
    shown = [-1]

    def progress(done: int, total: int) -> None:
        pct = done * 100 // total if total else 100
        if pct == shown[0] or (not tty and pct % 10 and done != total):
            return
        shown[0] = pct
        rate = done / max(time.perf_counter() - started, 1e-6) / GiB
        line = f"{done / GiB:6.2f} / {total / GiB:.2f} GiB ({pct}%, {rate:.2f} GiB/s)"
        sys.stderr.write(f"\r{line}" if tty else line + "\n")
        sys.stderr.flush()

    try:
        size = write_synthetic(shape, mix, path, seed=args.seed,
                               progress=progress if need > 256 * 1024**2 else None)
    except BaseException:
        path.unlink(missing_ok=True)  # never leave a half-written model behind
        raise
    if tty and need > 256 * 1024**2:
        sys.stderr.write("\n")
    print(f"wrote {path} ({size / GiB:.2f} GiB, {shape.description} {mix.name}, random "
          f"weights) in {time.perf_counter() - started:.1f} s")
    return EXIT_OK
