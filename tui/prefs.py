"""UI preferences the app remembers between runs: the theme chosen in the command
palette, which panes are shown and how wide the side column is.

They live in ``ui-prefs.json`` in the data dir (beside the conversation store), not in
the config file: the config is the user's to edit, and the app never writes it. A
missing or unreadable file means the defaults; the config's ``ui.theme`` is the theme
until one is chosen in the app.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from engine.files.atomic import atomic_write, private_dir
from engine.store import default_data_dir

log = logging.getLogger("kvchat.tui")

SideWidth = Literal["narrow", "normal", "wide"]
SIDE_WIDTHS: tuple[SideWidth, ...] = ("narrow", "normal", "wide")


class UiPrefs(BaseModel):
    model_config = ConfigDict(extra="ignore")

    theme: str | None = None
    memory_pane: bool = True
    kv_pane: bool = True
    side_width: SideWidth = "normal"


def prefs_path() -> Path:
    return default_data_dir() / "ui-prefs.json"


def load_prefs(path: Path | None = None) -> UiPrefs:
    path = path or prefs_path()
    try:
        return UiPrefs.model_validate_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return UiPrefs()
    except (OSError, UnicodeDecodeError, ValidationError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        return UiPrefs()


def save_prefs(prefs: UiPrefs, path: Path | None = None) -> None:
    path = path or prefs_path()
    try:
        private_dir(path.parent)
        atomic_write(path, json.dumps(prefs.model_dump(), indent=2) + "\n")
    except OSError as exc:
        log.warning("cannot save %s: %s", path, exc)
