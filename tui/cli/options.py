"""Turn command-line options into one validated config."""

from __future__ import annotations

import argparse
from pathlib import Path

from pydantic import ValidationError

from engine.config import KvchatConfig, describe_validation_error, load_config
from engine.errors import ConfigError
from tui.cli.backend import apply_backend_options

# option dest -> (config section, field)
_OVERRIDES = {
    "model": ("model", "path"),
    "ctx": ("model", "n_ctx"),
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
    config_path = getattr(args, "config", None)
    config = load_config(Path(config_path) if config_path else None)
    data = config.model_dump()
    changed = {}
    for dest, (section, key) in _OVERRIDES.items():
        value = getattr(args, dest, None)
        if value is not None:
            data[section][key] = value
            changed[f"{section}.{key}"] = dest
    apply_backend_options(data, args)
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
