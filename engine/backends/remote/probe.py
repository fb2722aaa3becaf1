"""Which server is behind a base URL, what model it serves, and what it tells.

``/v1/models`` is the one request every OpenAI-compatible server answers; the kind
is then read from what each server is known to expose, cheapest first:
llama-server answers ``/props``; vLLM lists its models as ``owned_by: vllm`` (with
``max_model_len``); Ollama answers ``/api/version``; llama-cpp-python publishes its
request schema at ``/openapi.json``. Anything else is "openai-compatible" and gets
only the standard fields. A probe that fails just means "not that kind".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx

from engine.backends.remote.errors import (
    ServerError,
    ServerProtocolError,
    describe,
    error_detail,
    status_error,
)
from engine.backends.remote.limits import get_body, get_json
from engine.backends.remote.wire import ServerKind

PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class ServerInfo:
    kind: ServerKind
    base_url: str
    """The API root, e.g. ``http://127.0.0.1:8080/v1``."""
    root: str
    """The server's root (the base URL without ``/v1``), where /props, /slots and
    /metrics live."""
    model: str
    models: list[str]
    n_ctx: int | None = None
    """Context per request, as the server says (llama-server /props, vLLM
    max_model_len); None when it does not."""
    meta: dict[str, Any] = field(default_factory=dict)
    """llama-server's per-model ``meta`` (n_params, n_vocab, n_ctx_train, size)."""
    slots: int | None = None
    """Parallel slots (llama-server)."""


def server_root(base_url: str) -> str:
    return base_url[: -len("/v1")] if base_url.endswith("/v1") else base_url


async def probe(client: httpx.AsyncClient, base_url: str, model: str | None,
                timeout: float) -> ServerInfo:
    """Identify the server. Raises ServerError subclasses (unreachable, 401, 404, not
    an OpenAI API, no such model)."""
    url = f"{base_url}/models"
    try:
        status, body = await get_body(client, url, timeout)
    except httpx.HTTPError as exc:
        raise describe(exc, url, timeout) from None
    if status >= 400:
        raise status_error(status, error_detail(body), url)
    try:
        listing = json.loads(body)
        entries = [e for e in listing["data"] if isinstance(e, dict) and "id" in e]
    except (ValueError, KeyError, TypeError):
        raise ServerProtocolError(f"{url} did not answer with an OpenAI model list: "
                                  "is this an OpenAI-compatible server?") from None
    names = [str(e["id"]) for e in entries]
    if not names:
        raise ServerError(f"the server at {base_url} serves no model")
    chosen = model or names[0]
    if chosen not in names:
        raise ServerError(f"the server at {base_url} has no model {chosen!r} "
                          f"(it serves: {', '.join(names)})")
    entry = entries[names.index(chosen)]
    root = server_root(base_url)
    meta = entry.get("meta") if isinstance(entry.get("meta"), dict) else {}

    props = await _get_json(client, f"{root}/props")
    if isinstance(props, dict) and "default_generation_settings" in props:
        settings = props.get("default_generation_settings") or {}
        n_ctx = _int(settings.get("n_ctx")) or _int(props.get("n_ctx"))
        return ServerInfo("llama-server", base_url, root, chosen, names, n_ctx,
                          meta or {}, _int(props.get("total_slots")))
    if entry.get("owned_by") == "vllm":
        return ServerInfo("vllm", base_url, root, chosen, names,
                          _int(entry.get("max_model_len")))
    version = await _get_json(client, f"{root}/api/version")
    if isinstance(version, dict) and "version" in version:
        return ServerInfo("ollama", base_url, root, chosen, names)
    spec = await _get_json(client, f"{root}/openapi.json")
    if _is_llama_cpp_python(spec):
        return ServerInfo("llama-cpp-python", base_url, root, chosen, names)
    return ServerInfo("openai-compatible", base_url, root, chosen, names)


def _is_llama_cpp_python(spec: Any) -> bool:
    try:
        title = str(spec["info"]["title"])
        request = spec["components"]["schemas"]["CreateChatCompletionRequest"]
        return "llama.cpp" in title and "grammar" in request["properties"]
    except (KeyError, TypeError):
        return False


async def _get_json(client: httpx.AsyncClient, url: str) -> Any:
    """The JSON at ``url``, or None for any failure: a probe only asks."""
    return await get_json(client, url, PROBE_TIMEOUT_S)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 \
        else None
