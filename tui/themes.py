"""Themes as data: TOML files in themes/ (and the user's config dir) become Textual themes.

A broken file is reported and skipped; the others still load.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator
from textual.color import Color, ColorParseError
from textual.theme import Theme

from engine.config import describe_validation_error


class ThemeFile(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    name: str
    """Name shown in the command palette and used in the config's ui.theme."""
    dark: bool = True
    primary: str
    secondary: str | None = None
    accent: str | None = None
    warning: str | None = None
    error: str | None = None
    success: str | None = None
    foreground: str | None = None
    background: str | None = None
    surface: str | None = None
    panel: str | None = None

    @field_validator("primary", "secondary", "accent", "warning", "error", "success",
                     "foreground", "background", "surface", "panel")
    @classmethod
    def _colour(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                Color.parse(value)
            except ColorParseError:
                raise ValueError(f"not a colour: {value!r}") from None
        return value

    def to_theme(self) -> Theme:
        return Theme(**self.model_dump())


def bundled_theme_files() -> list[Path]:
    root = resources.files("themes")
    return sorted(Path(str(p)) for p in root.iterdir() if p.name.endswith(".toml"))


def load_themes(paths: list[Path]) -> tuple[list[Theme], list[str]]:
    """Themes from ``paths``, and one line per file that could not be used."""
    themes: list[Theme] = []
    problems: list[str] = []
    for path in paths:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
            themes.append(ThemeFile.model_validate(data).to_theme())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            problems.append(f"theme {path.name}: {exc}")
        except ValidationError as exc:
            problems.append(f"theme {path.name}: {describe_validation_error(exc)}")
    return themes, problems
