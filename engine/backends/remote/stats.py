"""What a server says about its KV cache and load: llama-server's /slots and
/metrics, vLLM's /metrics. Metrics are Prometheus text, read with prometheus_client's
parser. Every value is None unless the server reported it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from engine.backends.remote.errors import ServerError
from engine.backends.remote.limits import get_body
from engine.backends.remote.wire import ServerKind

STATS_TIMEOUT_S = 2.0

# Metric names, newest spelling first, as each server exports them.
_KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc",
             "llamacpp:kv_cache_usage_ratio")
"""Share of the KV cache in use, 0..1 (vLLM's "perc" is a fraction too)."""
_KV_TOKENS = ("llamacpp:kv_cache_tokens",)
_RUNNING = ("vllm:num_requests_running", "llamacpp:requests_processing")
_WAITING = ("vllm:num_requests_waiting", "llamacpp:requests_deferred")
_DRAFTED = ("vllm:spec_decode_num_draft_tokens", "llamacpp:tokens_drafted")
_ACCEPTED = ("vllm:spec_decode_num_accepted_tokens", "llamacpp:tokens_drafted_accepted")


@dataclass(frozen=True)
class ServerStats:
    n_ctx: int | None = None
    """Context per slot (llama-server /slots)."""
    slot_tokens: int | None = None
    """Tokens in the busiest slot's context, where /slots says (older llama-server
    builds: n_past / n_prompt_tokens)."""
    kv_usage: float | None = None
    kv_tokens: int | None = None
    requests_running: int | None = None
    requests_waiting: int | None = None
    drafted_total: int | None = None
    accepted_total: int | None = None
    sources: list[str] = field(default_factory=list)
    """The endpoints that answered, e.g. ``["/slots", "/metrics"]``."""


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> ``{sample name: value}``, summing samples that differ only
    by labels (vLLM labels each gauge by model and engine). ValueError for text that
    is not Prometheus exposition format."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[sample.name] = values.get(sample.name, 0.0) + float(sample.value)
    return values


def _first(values: dict[str, float], names: tuple[str, ...]) -> float | None:
    for name in names:
        for key in (name, f"{name}_total"):
            if key in values:
                return values[key]
    return None


def _as_int(value: float | None) -> int | None:
    return None if value is None else round(value)


def stats_from_metrics(values: dict[str, float]) -> dict[str, Any]:
    usage = _first(values, _KV_USAGE)
    return {
        "kv_usage": None if usage is None else max(0.0, min(1.0, usage)),
        "kv_tokens": _as_int(_first(values, _KV_TOKENS)),
        "requests_running": _as_int(_first(values, _RUNNING)),
        "requests_waiting": _as_int(_first(values, _WAITING)),
        "drafted_total": _as_int(_first(values, _DRAFTED)),
        "accepted_total": _as_int(_first(values, _ACCEPTED)),
    }


def stats_from_slots(slots: Any) -> dict[str, Any]:
    """llama-server's /slots: a list with one object per slot."""
    if not isinstance(slots, list):
        return {}
    n_ctx = [s["n_ctx"] for s in slots if isinstance(s, dict) and isinstance(
        s.get("n_ctx"), int)]
    used = []
    for slot in slots:
        if isinstance(slot, dict):
            for key in ("n_past", "n_prompt_tokens"):
                if isinstance(slot.get(key), int):
                    used.append(slot[key])
                    break
    return {"n_ctx": max(n_ctx) if n_ctx else None,
            "slot_tokens": max(used) if used else None}


async def read_stats(client: httpx.AsyncClient, root: str, kind: ServerKind) -> ServerStats:
    """Ask the endpoints ``kind`` has; whatever fails or is switched off (llama-server
    needs --metrics for /metrics, and may answer 501 for /slots) stays None."""
    found: dict[str, Any] = {}
    sources: list[str] = []
    if kind == "llama-server":
        slots = await _get(client, f"{root}/slots")
        if slots is not None:
            try:
                found.update(stats_from_slots(json.loads(slots)))
                sources.append("/slots")
            except ValueError:
                pass
    if kind in ("llama-server", "vllm"):
        metrics = await _get(client, f"{root}/metrics")
        if metrics is not None:
            try:
                found.update({k: v for k, v in stats_from_metrics(
                    parse_metrics(metrics.decode("utf-8", "replace"))).items()
                    if v is not None})
                sources.append("/metrics")
            except ValueError:
                pass
    return ServerStats(sources=sources, **found)


async def _get(client: httpx.AsyncClient, url: str) -> bytes | None:
    try:
        status, body = await get_body(client, url, STATS_TIMEOUT_S)
    except (httpx.HTTPError, ServerError):
        return None
    return body if status == 200 else None
