"""The engine's event contract.

Every observable thing the engine does is one of these pydantic models. The same
objects feed the TUI, the conversation store and ``kvchat ask --events jsonl``, so
fields may be added freely but renamed only with care. Each carries a literal
``type`` field; :data:`Event` is the discriminated union over all of them.
"""

from __future__ import annotations

import time
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    ts: float = Field(default_factory=time.time)
    """Wall-clock time the event was created (seconds since the epoch)."""


class ModelLoaded(_Event):
    type: Literal["model_loaded"] = "model_loaded"
    path: str
    """The GGUF file that was loaded (for a remote backend: the server's base URL)."""
    name: str
    """Human-readable model name (general.name, else the file name)."""
    architecture: str
    """GGUF architecture string, e.g. ``gemma3`` or ``llama``."""
    description: str
    """llama.cpp's one-line description (type, size, quant)."""
    quant: str = ""
    """The file's quant as llama.cpp's tools name it (``Q4_K_M``, ``F16``); empty where
    not known (a server)."""
    quant_cost: str = ""
    """What ``kvchat quality`` measured this quant of this model to cost (KL divergence,
    top-1 agreement, against which reference), or ``quality not measured``."""
    n_params: int | None
    """None: not known (a remote server that does not say)."""
    file_bytes: int | None
    weights_bytes: int | None
    """Bytes of weights llama.cpp reports for the model."""
    n_vocab: int | None
    n_ctx: int
    """Context size (KV cells) of the live context; see ``n_ctx_source``."""
    n_ctx_train: int | None
    n_layers: int | None
    n_gpu_layers: int | None
    """Layers offloaded to the GPU (0 on a CPU-only build)."""
    backend: str
    """Compute backend as llama.cpp reports it: CPU, CUDA, Metal, Vulkan, ..."""
    devices: list[str] = Field(default_factory=list)
    """Names of the devices llama.cpp registered, GPU first."""
    chat_format: str
    """How turns are rendered: ``gguf-template`` or a built-in format name."""
    chat_format_note: str = ""
    """Why ``chat_format`` is not simply the model's template (it failed a test
    conversation: the built-in format replaced it, and why); empty otherwise."""
    kv_bytes: int | None
    """Bytes the KV cache needs for the whole context, by the architecture's formula."""
    buffers: dict[str, int] = Field(default_factory=dict)
    """Bytes llama.cpp reported allocating, e.g. ``{"model CPU_Mapped": ...,
    "KV CPU": ..., "compute CPU": ...}`` (measured, where kv_bytes is planned)."""
    load_s: float
    gpu_layers: list[int] = Field(default_factory=list)
    """Repeating layers on the GPU; the others run on the CPU."""
    output_on_gpu: bool = False
    """The output head (n_vocab x n_embd) is on the GPU."""
    kv_type: str = "f16"
    """KV cache type (f16, q8_0, q4_0)."""
    n_batch: int = 0
    n_ubatch: int = 0
    """Tokens per micro-batch: sizes the compute buffer."""
    flash_attn: bool | None = None
    """Flash attention as requested (None: llama.cpp's choice)."""
    batch_invariant: bool = False
    """Loaded so that a verification batch's rows equal one-token decodes bit for bit
    (engine/model/batch_invariance.py): greedy speculation cannot change the output."""
    n_ctx_source: Literal["model", "server", "assumed"] = "model"
    """model: the live llama.cpp context; server: what a remote server reported;
    assumed: the server does not say, so ``n_ctx`` is the config's ``model.n_ctx``,
    used only to size route budgets."""
    remote: str | None = None
    """The server's kind (kvchat, llama-server, vllm, ollama, llama-cpp-python or
    openai-compatible) when the model runs behind an HTTP API; None when local.
    Fields set to None are what that server does not tell."""


MemoryStage = Literal["planned", "loaded", "turn"]


class MemorySnapshot(_Event):
    """Memory by llama.cpp buffer: the plan before loading, then what was allocated."""

    type: Literal["memory"] = "memory"
    stage: MemoryStage
    """planned: the memory plan; loaded: measured after load; turn: after a reply."""
    pool: str
    """gpu, unified or cpu: the kind of memory the budget describes."""
    device: str
    budget_bytes: int
    n_layers: int
    n_gpu_layers: int
    buffers: dict[str, int]
    """Bytes per llama.cpp buffer, keyed as llama.cpp logs them (``model CUDA0``,
    ``KV CPU``, ``compute CUDA_Host``...): planned, or parsed from its log."""
    total_bytes: int
    """Sum of ``buffers``."""
    planned_total_bytes: int
    """The plan's sum, for the measured/planned ratio."""
    kv_bytes: int
    kv_used_bytes: int = 0
    """KV bytes holding tokens (turn snapshots)."""
    rss_bytes: int | None = None
    """Resident memory of the process (measured snapshots)."""
    gpu_used_bytes: int | None = None
    """GPU memory in use on the device, all processes (measured, GPU only)."""
    fits: bool = True
    verdict: str = ""
    warnings: list[str] = Field(default_factory=list)


class TurnStarted(_Event):
    """A user message was stored and a reply is about to be generated."""

    type: Literal["turn_started"] = "turn_started"
    conversation_id: int
    user_message_id: int
    reply_message_id: int


class PromptEvaluated(_Event):
    """The prompt is in the KV cache; the first token is next."""

    type: Literal["prompt"] = "prompt"
    prompt_tokens: int
    """Tokens in the whole rendered prompt."""
    reused_tokens: int | None
    """Prompt tokens already in the KV cache from an earlier turn (not evaluated);
    None when a server does not say."""
    evaluated_tokens: int | None
    """Prompt tokens evaluated for this turn; None when a server does not say."""
    restored_tokens: int = 0
    """Of ``reused_tokens``, those restored from a saved state (engine/cache/)."""
    prefill_s: float
    """For a remote backend: request sent to first token, network and queue included."""
    token_count: str = "exact"
    """How prompt_tokens was counted: exact, server (its usage fields),
    tiktoken:<encoding> or estimate."""


class TokenChunk(_Event):
    """One or more generated tokens, coalesced while the consumer was busy."""

    type: Literal["token"] = "token"
    text: str
    token_ids: list[int]


class Progress(_Event):
    """Decode progress while a reply streams, measured in the engine thread."""

    type: Literal["progress"] = "progress"
    completion_tokens: int
    tokens_per_s: float
    """Decode rate so far (tokens after the first over the time they took)."""


class KVUsage(_Event):
    type: Literal["kv"] = "kv"
    used_cells: int
    """KV cells holding tokens of the live conversation."""
    reserved_cells: int
    """Cells set aside for the reply in flight."""
    n_ctx: int | None
    """None when a server does not say."""
    bytes_per_cell: int | None
    """KV bytes one token occupies across all layers (K and V); None for a server."""
    used_bytes: int | None
    total_bytes: int | None
    kept_cells: int = 0
    """Cells at the start that eviction never touches (system prompt, sink tokens)."""
    evicted_total: int = 0
    """Tokens of this conversation evicted so far (no longer in the cache)."""
    source: Literal["engine", "server"] = "engine"
    """engine: kvchat's own KV manager; server: a remote server's report, where
    ``used_cells`` is the context this conversation takes (the server manages the
    cache; kvchat reserves and evicts nothing there)."""
    server_kv_usage: float | None = None
    """Share (0..1) of the server's whole KV cache in use, all requests together,
    from its metrics; None when it does not export one."""


EvictionReason = Literal["generation", "prompt"]


class Eviction(_Event):
    """Cells dropped from the KV cache to make room, and the rest shifted down in place."""

    type: Literal["eviction"] = "eviction"
    reason: EvictionReason
    """generation: the reply filled the cache; prompt: the conversation plus the
    reply's reserve did not fit before the reply started."""
    evicted_tokens: int
    start: int
    """First evicted position (cache positions before the eviction)."""
    end: int
    """One past the last evicted position; ``end - start`` may exceed the cells
    evicted when part of the span was never in the cache."""
    kept_tokens: int
    """Cells kept at the start (system prompt and sink tokens)."""
    shifted_tokens: int
    """Cells after the span moved down by ``end - start`` positions, not re-evaluated."""
    at_turn_boundary: bool
    """True when the span ends where a turn ends, so no message was cut in two."""
    used_before: int
    used_after: int
    elapsed_s: float
    """seq_rm + seq_add bookkeeping in llama.cpp."""
    shift_s: float
    """The first decode after the eviction, which applies llama.cpp's deferred RoPE
    shift to every shifted cell (it also evaluates ``shift_tokens`` new tokens)."""
    shift_tokens: int
    evicted_total: int
    """Tokens of this conversation evicted so far, this eviction included."""


StateCacheAction = Literal["save", "restore", "miss", "evict", "drop"]


class StateCacheNote(_Event):
    """The state cache (engine/cache/) saved, restored, missed or evicted a
    conversation's KV state; with the pool's totals after it, for the KV pane."""

    type: Literal["state_cache"] = "state_cache"
    action: StateCacheAction
    """drop: a save not kept (larger than the budgets, a full disk, a pending shift)."""
    tier: Literal["ram", "disk"] | None = None
    tokens: int = 0
    """Cells saved, evicted, or restored (the shared prefix kept)."""
    bytes: int = 0
    ms: float = 0.0
    reason: str = ""
    """Why, for a miss, an eviction or a drop: one line."""
    entries: int = 0
    ram_bytes: int = 0
    ram_budget: int = 0
    disk_bytes: int = 0
    disk_budget: int = 0


class SpecStats(_Event):
    """Speculative decoding at work: sent after verification rounds and when the
    drafter switches itself off or on."""

    type: Literal["spec"] = "spec"
    drafter: Literal["prompt-lookup", "draft-model"]
    active: bool
    """False while speculation is switched off for costing more than it saves."""
    reason: str = ""
    """Why it switched off or on, when this event reports a switch."""
    rounds: int
    """Verification rounds in this reply."""
    drafted: int
    """Tokens drafted in this reply."""
    accepted: int
    """Drafted tokens the target model agreed with, in this reply."""
    acceptance: float
    """accepted / drafted in this reply."""
    running_acceptance: float
    """accepted / drafted over every reply since the model was loaded."""
    draft_len: int
    """Tokens the next round will draft at most."""
    plain_s_per_token: float
    """The engine's running measure of one plain decode step (decode + sample)."""
    spec_s_per_token: float
    """Time per token emitted by recent verification rounds, drafting included."""
    speedup: float
    """plain_s_per_token / spec_s_per_token: above 1 means speculation pays."""


class PromptTruncated(_Event):
    """The new message did not fit in the context with room for a reply: its oldest
    tokens were dropped and the model sees only the rest."""

    type: Literal["prompt_truncated"] = "prompt_truncated"
    message_tokens: int
    """Tokens this turn added (the message and its turn markers)."""
    cut_tokens: int
    n_ctx: int
    message: str
    """One line for a person."""


class ContextMap(_Event):
    """Which tokens of each message are in the KV cache, in logical positions (the
    conversation as rendered, nothing evicted): sent after an eviction and before ``done``."""

    type: Literal["context"] = "context"
    spans: list[tuple[str, int, int]]
    """Each message of the request, then the reply: its role and tokens ``[start, end)``."""
    n_keep: int
    """``[0, n_keep)`` is never evicted (system prompt, sink tokens)."""
    evicted: list[tuple[int, int, str]] = Field(default_factory=list)
    """Spans gone from the cache, each with its eviction's reason (``earlier``: before
    the engine's record of this window)."""
    cached_end: int
    """Tokens before this are in the cache, but for ``evicted``."""
    restored: list[tuple[int, int]] = Field(default_factory=list)
    """Spans this turn restored from a saved state (engine/cache/)."""
    cut: int = 0
    """Tokens of the turn's own message cut to fit (``prompt_truncated``)."""


class RouteDecision(_Event):
    """Where a prompt was routed and what that decided, sent before its reply starts."""

    type: Literal["route"] = "route"
    route: str
    """The template's name: code, qa, summarize, chat, or a user's own."""
    confidence: float
    """0..1: the winner's score against the runner-up (1.0 for an override)."""
    reason: str
    """The signals that fired, for a person."""
    source: Literal["signals", "override", "model", "disabled"] = "signals"
    """signals: the cheap signals decided; override: ``--route`` or ``/route``;
    model: the model fallback answered; disabled: routing is off."""
    signals: list[str] = Field(default_factory=list)
    """Every signal that fired, as ``route: label (+weight)``."""
    template_source: str
    """Where the template came from: ``bundled`` or the user's file."""
    output: str
    """Expected output format: prose, json, code or list."""
    n_ctx: int
    prompt_budget: int
    """Tokens the conversation and the message may take (the template's prompt share)."""
    prompt_tokens: int
    """Tokens in the new message with the route's instructions."""
    token_count: str
    """How prompt_tokens was counted: exact, tiktoken:<encoding> or estimate."""
    reply_reserve: int
    """The template's reply reserve in tokens, before the engine's caps."""
    kv_reserved: int
    """KV cells asked to be free for the reply: the reserve capped at max_tokens and
    half the context (the ``kv`` event shows what was actually kept free)."""
    max_tokens: int
    temperature: float
    route_ms: float
    """Time the decision took, the model fallback included."""
    fallback_ms: float | None = None
    """Time the model fallback took, when it was asked."""


RetryStrategy = Literal["as_generated", "repair", "stricter_prompt", "grammar"]
"""How an attempt at a structured reply was made: the reply as generated; the same text
with trivially broken JSON repaired (no generation); a new reply to a prompt that adds
the error and stricter instructions; a new reply under grammar-constrained decoding."""


class OutputCheck(_Event):
    """What the output checker found in one attempt at a structured reply."""

    type: Literal["output_check"] = "output_check"
    attempt: int
    """1 for the reply as generated, then 2, 3, ... for each retry."""
    strategy: RetryStrategy
    format: Literal["json", "code", "list"]
    ok: bool
    found: str
    """What the reply holds, for a person: ``a JSON object with 3 keys``,
    ``2 code blocks (python, json)``, ``a list of 5 items``, ``nothing structured``."""
    errors: list[str] = Field(default_factory=list)
    """Each problem, one line each: parse and syntax errors with their position, schema
    violations with their JSON path; a ``truncated`` attempt's first: ``cut off at N tokens``."""
    final: bool = False
    """True on the check that decides the reply (it passed, or no attempt is left)."""
    truncated: bool = False  # cut off (length, context_full) before it ended: never ok


class Retry(_Event):
    """A structured reply failed its check and another attempt starts."""

    type: Literal["retry"] = "retry"
    attempt: int
    """The number of the attempt about to be made (2 or more)."""
    strategy: RetryStrategy
    reason: str
    """The error that caused it (the previous check's first error)."""
    prompt_change: str = ""
    """What this attempt adds to the prompt; empty when the prompt is unchanged."""


class ChatFormatFallback(_Event):
    """The chat template failed this conversation: it was rendered in ``chat_format``."""

    type: Literal["chat_format"] = "chat_format"
    chat_format: str
    reason: str
    given_up: bool = False
    """It hit a limit (time, size, memory): not tried again while the model is loaded."""
    message: str


FinishReason = Literal["stop", "length", "cancelled", "context_full"]


class Done(_Event):
    type: Literal["done"] = "done"
    finish_reason: FinishReason
    """stop: end of turn; length: max tokens; cancelled: by the user;
    context_full: the KV cache had no room left."""
    prompt_tokens: int
    reused_tokens: int | None
    """None when a server does not say (as for evaluated_tokens)."""
    evaluated_tokens: int | None
    completion_tokens: int
    ttft_s: float
    """Time from the request reaching the engine thread to the first token sampled."""
    prefill_tokens_per_s: float | None
    tokens_per_s: float
    """Decode rate: completion tokens after the first over the time they took."""
    total_s: float
    evictions: int = 0
    """Evictions during this turn (prompt and generation)."""
    evicted_tokens: int = 0
    drafted_tokens: int | None = 0
    """Tokens drafted by speculative decoding in this reply (None: a server that
    does not say)."""
    accepted_tokens: int | None = 0
    """Drafted tokens the model accepted (each one a decode step saved)."""
    decode_s: float | None = None
    """Seconds spent inside llama.cpp's decode calls from the first token to the last.
    The rest of that span went to sampling, drafting and the engine's own Python (a GPU
    backend returns before its graph has run, so there part of the graph's time shows
    up after the call). None where a server does the decoding."""
    attempts: int = 1
    """Attempts this reply took: more than 1 when a structured reply was retried.
    The counters above are the final attempt's."""
    output_ok: bool | None = None
    """For a structured reply: whether the final text passed its check (False means
    every attempt failed and the reply is marked so); None for prose."""
    text: str
    """The whole reply (the final attempt's text)."""
    token_count: str = "exact"
    """How the token counts were made: exact (the model's tokenizer), server (its
    usage fields), or estimate (streamed chunks and tiktoken, when a server sent no
    usage: a cancelled reply or a server that never does)."""


class Queued(_Event):
    """The reply waits for its turn on an engine that other clients share (``kvchat
    serve``): sent when it joins the queue, when it moves up, and every few seconds
    while it waits. Its own events follow once it starts."""

    type: Literal["queued"] = "queued"
    position: int
    """1: the next reply to start."""
    queued: int
    """Replies waiting, this one included."""
    in_flight: int
    """Replies generating now."""


class Error(_Event):
    type: Literal["error"] = "error"
    code: str
    """Stable machine-readable code, e.g. ``prompt_too_long``."""
    message: str
    """One line for a person."""


Event = Annotated[
    ModelLoaded | MemorySnapshot | TurnStarted | PromptEvaluated | TokenChunk | Progress
    | KVUsage | Eviction | PromptTruncated | SpecStats | RouteDecision | OutputCheck | Retry
    | ChatFormatFallback | Queued | Done | Error | StateCacheNote | ContextMap,
    Field(discriminator="type"),
]

EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


def parse_event(line: str | bytes) -> Event:
    """Parse one JSON line (as written by ``--events jsonl``) back into an event."""
    return EVENT_ADAPTER.validate_json(line)
