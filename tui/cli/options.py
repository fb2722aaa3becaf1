"""Turn command-line options into one validated config, and read what they name."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn, TextIO

from pydantic import ValidationError

from engine.api import check_prompt
from engine.config import KvchatConfig, describe_validation_error
from engine.errors import ConfigError, PromptError
from tui.cli.backend import apply_backend_options
from tui.cli.models import model_path
from tui.config import load_app_config


class OneLineParser(argparse.ArgumentParser):
    """A mistake on the command line is one line on stderr and exit code 2, like every
    other error; the whole usage is what ``--help`` is for."""

    def error(self, message: str) -> NoReturn:
        from tui.safe_text import visible  # the message quotes what was typed

        self.exit(2, f"{self.prog}: error: {visible(message)} (see {self.prog} --help)\n")


# option dest -> (config section, field)
_OVERRIDES = {
    "model": ("model", "path"),
    "ctx": ("model", "n_ctx"),
    "parallel": ("model", "parallel"),
    "kv_layout": ("model", "kv_layout"),
    "kv_type": ("model", "kv_type"),
    "budget": ("model", "memory_budget"),
    "speculative": ("speculative", "mode"),
    "draft_model": ("speculative", "draft_model"),
    "max_tokens": ("sampling", "max_tokens"),
    "temp": ("sampling", "temperature"),
    "seed": ("sampling", "seed"),
}


def resolve_config(args: argparse.Namespace) -> KvchatConfig:
    """The config file (``--config`` or the default), with options laid over it."""
    config = load_app_config(config_path(args))
    data = config.model_dump()
    changed = {}
    for dest, (section, key) in _OVERRIDES.items():
        value = getattr(args, dest, None)
        if value is not None:
            data[section][key] = value
            changed[f"{section}.{key}"] = dest
    apply_backend_options(data, args)
    if getattr(args, "model", None) is not None:
        # A server ignores the local model: an unknown name is only an error here.
        data["model"]["path"] = model_path(args.model, config.models.dirs,
                                           strict=data["backend"]["kind"] == "local")
    if getattr(args, "base_url", None) is not None:
        changed[f"backend.endpoints.{data['backend']['endpoint']}.base_url"] = "base_url"
    try:
        return KvchatConfig.model_validate(data)
    except ValidationError as exc:
        message = describe_validation_error(exc)
        key = message.split(":", 1)[0]
        if key in changed:
            option = "--" + changed[key].replace("_", "-")
            raise ConfigError(f"option {option}: {message.split(':', 1)[1].strip()}") from None
        raise ConfigError(message) from None


def config_path(args: argparse.Namespace) -> Path | None:
    """The file ``--config`` names; None for the default."""
    path = getattr(args, "config", None)
    return Path(path) if path else None


def pinned_sampling(args: argparse.Namespace) -> set[str]:
    """Sampling fields set on the command line: a route's template keeps its hands off."""
    names = {"max_tokens": "max_tokens", "temp": "temperature", "seed": "seed"}
    return {field for dest, field in names.items() if getattr(args, dest, None) is not None}


def read_prompt(arg: str, stdin: TextIO = sys.stdin) -> str:
    """The prompt argument, or stdin for ``-``. Raises PromptError."""
    if arg != "-":
        return check_prompt(arg)
    raw = stdin.buffer.read()
    try:
        return check_prompt(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise PromptError(f"the prompt is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at "
                          f"offset {exc.start})", code="prompt_not_utf8") from None
