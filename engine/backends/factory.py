"""The engine the config asks for: the local model (in this process or a child one) or
an OpenAI-compatible server, from ``[backend]``. Each backend is imported only when
chosen, so a server client never loads llama.cpp."""

from __future__ import annotations

import os

from pydantic import SecretStr

from engine.api import ChatEngine
from engine.config import KvchatConfig
from engine.errors import ConfigError


def make_engine(config: KvchatConfig, *, own_process: bool = False) -> ChatEngine:
    """The engine ``config.backend`` names, not started. ``own_process``: the local
    model runs in a child process of its own. ConfigError for a missing endpoint or an
    API key variable that is not set."""
    if config.backend.kind == "local":
        return make_local_engine(config, own_process=own_process)
    from engine.backends.remote.engine import OpenAIEngine

    name, endpoint = config.backend.selected()
    key = None
    if endpoint.api_key_env:
        value = os.environ.get(endpoint.api_key_env)
        if not value:
            raise ConfigError(f"the API key variable {endpoint.api_key_env} (api_key_env of "
                              f"endpoint {name!r}) is not set or empty")
        key = SecretStr(value)
    return OpenAIEngine(endpoint, api_key=key, sampling=config.sampling,
                        assumed_n_ctx=config.model.n_ctx,
                        tiktoken_source=config.router.tiktoken_file or "cl100k_base")


def make_local_engine(config: KvchatConfig, *, own_process: bool = False) -> ChatEngine:
    """The local model of ``config``, whatever ``backend`` says, not started."""
    if own_process:
        from engine.backends.process.engine import ProcessEngine

        return ProcessEngine(config.model, config.sampling, config.kv, config.speculative,
                             config.cache)
    from engine.backends.local import LocalEngine

    return LocalEngine(config.model, config.sampling, config.kv, config.speculative, config.cache)
