"""A model named the way ``kvchat models`` lists it, turned into its file."""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from engine.errors import ConfigError


class Named(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def path(self) -> Path: ...


def resolve_model(name_or_path: str | Path, rows: Sequence[Named]) -> Path:
    """The file ``name_or_path`` means: an existing path as it is; else the row of
    that exact name; else the one row whose name starts with it, or failing that
    contains it, ignoring case. Raises ConfigError for an unknown or ambiguous name,
    naming the closest ones."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    wanted = str(name_or_path)
    by_name = {row.name: row for row in rows}
    if wanted in by_name:
        return by_name[wanted].path
    lowered = wanted.lower()
    for matches in ([r for r in rows if r.name.lower() == lowered],
                    [r for r in rows if r.name.lower().startswith(lowered)],
                    [r for r in rows if lowered in r.name.lower()]):
        if len(matches) == 1:
            return matches[0].path
        if len(matches) > 1:
            names = ", ".join(r.name for r in matches[:6])
            more = f" and {len(matches) - 6} more" if len(matches) > 6 else ""
            raise ConfigError(f"model {wanted!r} is ambiguous: {names}{more}")
    raise ConfigError(unknown_model_message(wanted, [row.name for row in rows]))


def unknown_model_message(wanted: str, names: Sequence[str]) -> str:
    close = difflib.get_close_matches(wanted, names, n=5, cutoff=0.4)
    hint = f"; close: {', '.join(close)}" if close else ""
    return (f"no model named {wanted!r} and no such file{hint} "
            "(`kvchat models` lists them)")


def looks_like_path(value: str) -> bool:
    """A value meant as a file, not a name: a ``.gguf`` file name or a path with a
    folder in it that is not one of the catalog's ``hf:`` names."""
    if value.lower().endswith(".gguf") and not value.startswith("hf:"):
        return True
    return (os.sep in value or "/" in value or value.startswith("~")) \
        and not value.startswith(("hf:", "ollama:"))
