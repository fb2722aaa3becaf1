"""The backend options (``--backend``, ``--base-url``, ``--endpoint``...): which engine
the commands that chat use, laid over ``[backend]`` in the config. The engine itself
comes from :func:`engine.backends.factory.make_engine`."""

from __future__ import annotations

import argparse
import re
from typing import Any

from engine.errors import ConfigError

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
"""What an environment variable's name may be (POSIX shells' rule)."""

CLI_ENDPOINT = "command-line"
"""The endpoint ``--base-url`` defines when ``--endpoint`` names none."""


def add_backend_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    default = argparse.SUPPRESS if suppress else None
    group = parser.add_argument_group("backend (default: the local model)")
    group.add_argument("--backend", choices=["local", "openai"], default=default,
                       help="local: llama.cpp in this process; openai: an OpenAI-compatible "
                            "server (llama-server, vLLM, Ollama, LM Studio)")
    group.add_argument("--base-url", metavar="URL", default=default,
                       help="the server's API root, e.g. http://127.0.0.1:8080/v1 "
                            "(implies --backend openai)")
    group.add_argument("--api-key-env", metavar="NAME", default=default,
                       help="environment variable that holds the server's API key")
    group.add_argument("--remote-model", metavar="NAME", default=default,
                       help="model name as the server lists it (default: its first)")
    group.add_argument("--endpoint", metavar="NAME", default=default,
                       help="a [backend.endpoints.NAME] table from the config "
                            "(implies --backend openai)")


def apply_backend_options(data: dict[str, Any], args: argparse.Namespace) -> None:
    """Lay the backend options over the config's ``backend`` section (as a dict)."""
    backend = data["backend"]
    kind = getattr(args, "backend", None)
    endpoint = getattr(args, "endpoint", None)
    base_url = getattr(args, "base_url", None)
    if endpoint is not None:
        backend["endpoint"] = endpoint
    if base_url is not None:
        name = endpoint or CLI_ENDPOINT
        backend["endpoints"][name] = {**backend["endpoints"].get(name, {}),
                                      "base_url": base_url}
        backend["endpoint"] = name
    if kind is None and (endpoint is not None or base_url is not None):
        kind = "openai"
    if kind is not None:
        backend["kind"] = kind
    for option, key in (("api_key_env", "api_key_env"), ("remote_model", "model")):
        value = getattr(args, option, None)
        if value is None:
            continue
        if option == "api_key_env" and not ENV_NAME.fullmatch(value):
            # Most likely the key itself: never echoed, not even in the error.
            raise ConfigError("--api-key-env takes the NAME of an environment variable "
                              "that holds the key (e.g. OPENAI_API_KEY), not the key itself")
        name = backend.get("endpoint") or (next(iter(backend["endpoints"]))
                                           if len(backend["endpoints"]) == 1 else None)
        if name is None or name not in backend["endpoints"]:
            flag = "--" + option.replace("_", "-")
            raise ConfigError(f"option {flag} needs a server: give --base-url or "
                              "--endpoint NAME")
        backend["endpoints"][name][key] = value
