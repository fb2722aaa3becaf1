"""``--format`` and ``--schema``: ask for a structured reply, checked and retried."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from engine.errors import SchemaFileError
from engine.structured.checks import schema_problem
from engine.structured.spec import OutputSpec

MAX_SCHEMA_BYTES = 1 << 20


def add_format_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", dest="output_format", choices=["json", "code", "list"],
                        help="the reply must be JSON, a fenced code block or a list: it is "
                             "checked, and retried (stricter prompt, then a grammar) when "
                             "malformed; only the final text goes to stdout")
    parser.add_argument("--schema", metavar="FILE",
                        help="a JSON Schema the reply must validate against (implies "
                             "--format json)")


def output_spec(args: argparse.Namespace) -> OutputSpec | None:
    """The structured output asked for, or None. Raises SchemaFileError."""
    fmt = getattr(args, "output_format", None)
    schema_path = getattr(args, "schema", None)
    if schema_path is None:
        return OutputSpec(format=fmt) if fmt else None
    if fmt not in (None, "json"):
        raise SchemaFileError(f"--schema needs --format json, not --format {fmt}")
    return OutputSpec(format="json", schema=read_schema(Path(schema_path)))


def read_schema(path: Path) -> dict:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SchemaFileError(f"schema file not found: {path}") from None
    except IsADirectoryError:
        raise SchemaFileError(f"{path} is a directory, not a schema file") from None
    except OSError as exc:
        raise SchemaFileError(f"cannot read {path}: {exc.strerror}") from None
    if len(raw) > MAX_SCHEMA_BYTES:
        raise SchemaFileError(f"{path}: a schema over 1 MiB is not supported")
    try:
        schema = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise SchemaFileError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise SchemaFileError(f"{path}: not valid JSON (line {exc.lineno} column "
                              f"{exc.colno}: {exc.msg})") from None
    except RecursionError:
        raise SchemaFileError(f"{path}: nested too deeply") from None
    if problem := schema_problem(schema):
        raise SchemaFileError(f"{path}: {problem}")
    if not isinstance(schema, dict):
        raise SchemaFileError(f"{path}: a JSON Schema must be an object")
    return schema
