"""``kvchat models``: the GGUF files that can be run here, read from their headers;
and ``--model NAME``, a name from that list in place of a path."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tui.cli import EXIT_OK
from tui.safe_text import json_dumps, one_line

if TYPE_CHECKING:  # the engine is imported when the command runs, not for --help
    from engine.model.catalog import ModelRow

_COLUMNS = ("NAME", "SOURCE", "ARCH", "PARAMS", "QUANT", "SIZE", "TEMPLATE", "VERDICT")


def add_models_parser(commands: argparse._SubParsersAction) -> None:
    models = commands.add_parser(
        "models", help="list the GGUF models found here (reads headers only)",
        description="List the GGUF models kvchat can run: the bundled one, [models] dirs "
                    "in the config, LM Studio, Ollama, the Hugging Face cache and "
                    "llama.cpp's cache, with whether each fits this machine's memory. "
                    "Any NAME listed works as --model NAME.")
    models.add_argument("--config", metavar="PATH", help="config file ([models] dirs)")
    models.add_argument("--budget", metavar="SIZE",
                        help="memory to plan for, e.g. 36GiB (default: detected)")
    models.add_argument("--json", action="store_true", help="print a JSON list")


def run_models(args: argparse.Namespace) -> int:
    from engine.model.catalog import describe_models, find_models
    from engine.model.memory.budget import detect_budget
    from tui.config import load_app_config

    config = load_app_config(Path(args.config) if args.config else None)
    budget = detect_budget(args.budget or config.model.memory_budget)
    rows = describe_models(find_models(config.models.dirs), budget)
    if args.json:
        print(json_dumps([_as_json(row) for row in rows]))
    else:
        sys.stdout.write(render(rows))
    return EXIT_OK


def _as_json(row: ModelRow) -> dict[str, object]:
    return {"name": row.name, "source": row.source, "path": str(row.path),
            "architecture": row.architecture, "parameters": row.parameters,
            "quant": row.quant, "file_bytes": row.file_bytes,
            "chat_template": row.chat_template, "verdict": row.verdict,
            "broken": row.broken}


def render(rows: list[ModelRow]) -> str:
    """The table, every value from the disk escaped so it cannot drive the terminal."""
    table = [_COLUMNS] + [(
        safe(row.name), row.source, safe(row.architecture or "-"),
        human_count(row.parameters), safe(row.quant or "-"), human_bytes(row.file_bytes),
        "yes" if row.chat_template else "no", safe(row.verdict)) for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(_COLUMNS) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=False))
             + "  " + line[-1] for line in table]
    return "\n".join(lines) + "\n"


def safe(text: str) -> str:
    """``text`` on one line, what a terminal would act on written as escapes."""
    return one_line(text)


def human_count(n: int | None) -> str:
    if not n:
        return "-"
    for unit, scale in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}".replace(".0" + unit, unit)
    return str(n)


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def model_path(value: str, dirs: list[str], *, strict: bool = True) -> str:
    """What ``--model VALUE`` loads: VALUE itself when it is a file or looks like a
    path (a missing one is the loader's clear error, with no search of every model
    folder first), else the file of the catalog's model of that name. Raises
    ConfigError for an unknown or ambiguous name when ``strict``; otherwise VALUE is
    kept as it is."""
    from engine.errors import ConfigError
    from engine.model.catalog import find_models
    from engine.model.model_names import looks_like_path, resolve_model

    if Path(value).expanduser().exists() or looks_like_path(value):
        return value  # a missing path: the loader's own error says what is wrong
    try:
        return str(resolve_model(value, find_models(dirs)))
    except ConfigError:
        if not strict:
            return value
        raise
