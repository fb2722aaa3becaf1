"""The app's own settings: the config file's ``[ui]`` table.

The engine's config keeps that table as it was read (``KvchatConfig.ui``, a dict);
it is validated here, as strictly as the engine's sections: a typo is a
:class:`ConfigError` naming the key (``ui.them: unknown key``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.config import (
    KvchatConfig,
    default_config_path,
    describe_validation_error,
    load_config,
)
from engine.errors import ConfigError


class UIConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True,
                              validate_assignment=True)

    theme: str = "kvchat-dark"
    """Theme name: kvchat-dark, kvchat-light, kvchat-high-contrast, a Textual built-in,
    or a TOML theme in the config dir's themes/ folder."""
    ui_nice: int = Field(10, ge=0, le=19)
    """Scheduling priority steps the app's screen updates give way to decoding (Linux),
    for when they share cores (a CPU of fewer than 8, or ``model.n_threads`` set). On
    a 2-core CPU: 10 decodes at 0.92x of ``kvchat ask`` with key presses answered in
    about 50 ms at the median; 15 at 0.95x while typing and 0.96x while watching, but
    key presses then wait about 0.12 s at the median (0.37 s at worst) while a reply
    streams (docs/tui.md)."""
    spare_core: bool = True
    """On a CPU of 8 cores or more, while the app runs, decode and verify drafts on one
    core fewer than the machine has (prompt processing keeps them all), so that screen
    updates never stop llama.cpp's decode threads, which wait for each other at every
    step of the graph: on 16 cores the app ran at 0.89x of ``kvchat ask`` this way and
    0.67x on all of them. On fewer cores the last one is worth more than the screen
    costs, and every core decodes. Only when ``model.n_threads`` is empty
    (docs/tui.md)."""
    stream_view: Literal["auto", "markdown", "source"] = "auto"
    """How a reply shows while it streams. ``markdown``: rendered as it comes.
    ``source``: its Markdown source, highlighted (code in its fence's language), rendered
    as Markdown when the reply ends; a frame then costs a few rows instead of a
    layout of the screen. ``auto``: source where the model decodes on the CPU with
    every core the screen runs on (CPU only, fewer than 8 cores or ``model.n_threads``
    at least the core count), where every millisecond of screen work is one the decode
    stands still; Markdown otherwise. On a 2-core CPU, 2048-token replies decoded at
    0.97-1.0x of ``kvchat ask`` as source while watching and 0.90-0.92x as Markdown
    (docs/tui.md)."""
    engine_process: bool = True
    """Run the local model in a process of its own, so that the screen's Python never
    holds up the token loop's (they would share one interpreter lock) and a crash in
    llama.cpp ends only the reply, not the app (docs/tui.md)."""
    gil_switch_ms: float = Field(0.1, ge=0.0, le=100.0)
    """With ``engine_process`` off: how long (ms) the app's screen update may keep
    Python's interpreter lock from the engine thread, which needs it between two
    decodes; 0 leaves Python's 5 ms (docs/tui.md)."""


class _AppSections(BaseModel):
    """The tables of the config file that belong to the app (so that an error's key
    reads as it does in the file)."""

    model_config = ConfigDict(extra="forbid")

    ui: UIConfig


def ui_settings(config: KvchatConfig, source: str | None = None) -> UIConfig:
    """``config``'s ``[ui]`` table, validated. Raises ConfigError naming the key, after
    ``source`` (the file) when given."""
    try:
        return _AppSections.model_validate({"ui": config.ui}).ui
    except ValidationError as exc:
        where = f"{source}: " if source else ""
        raise ConfigError(f"{where}{describe_validation_error(exc)}") from None


def load_app_config(path: Path | None = None) -> KvchatConfig:
    """:func:`engine.config.load_config`, with the app's ``[ui]`` table checked too:
    every command reports a typo anywhere in the file the same way."""
    config = load_config(path)
    ui_settings(config, source=str(Path(path).expanduser() if path is not None
                                   else default_config_path()))
    return config
