"""Events of one reply, from its route and prompt to its last token."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from engine.events.base import _Event


class TurnStarted(_Event):
    """A user message was stored and a reply is about to be generated."""

    type: Literal["turn_started"] = "turn_started"
    conversation_id: int
    user_message_id: int
    reply_message_id: int
    reply: int | None = None
    """Of N answers to one message (``ChatSession.answers``): which one this row is for,
    0..n-1, as the engine's events of that answer say; None for a single reply."""


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


class PromptEvaluated(_Event):
    """The prompt is in the KV cache; the first token is next."""

    type: Literal["prompt"] = "prompt"
    reply: int | None = None
    """Which of the replies decoded together this event belongs to (the id the batch
    gave it; 0..n-1 for the N answers of ``ChatEngine.answers``); None for a reply
    decoded alone."""
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
    reply: int | None = None
    """Which of the replies decoded together this event belongs to (the id the batch
    gave it; 0..n-1 for the N answers of ``ChatEngine.answers``); None for a reply
    decoded alone."""
    text: str
    token_ids: list[int]


class Progress(_Event):
    """Decode progress while a reply streams, measured in the engine thread."""

    type: Literal["progress"] = "progress"
    reply: int | None = None
    """Which of the replies decoded together this event belongs to (the id the batch
    gave it; 0..n-1 for the N answers of ``ChatEngine.answers``); None for a reply
    decoded alone."""
    completion_tokens: int
    tokens_per_s: float
    """Decode rate so far (tokens after the first over the time they took)."""


class SpecStats(_Event):
    """Speculative decoding at work: sent after verification rounds and when the
    drafter switches itself off or on."""

    type: Literal["spec"] = "spec"
    reply: int | None = None
    """Which of the replies decoded together this event belongs to (the id the batch
    gave it; 0..n-1 for the N answers of ``ChatEngine.answers``); None for a reply
    decoded alone."""
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


class Queued(_Event):
    """The reply waits for its turn: on an engine that other clients share (``kvchat
    serve``), sent when it joins the queue, when it moves up, and every few seconds
    while it waits; in a batch of replies (``--parallel``) whose KV cells or sequences
    are taken, when it joins the batch's queue and when it moves up. Its own events
    follow once it starts."""

    type: Literal["queued"] = "queued"
    reply: int | None = None
    """Which of the replies decoded together this event belongs to (the id the batch
    gave it; 0..n-1 for the N answers of ``ChatEngine.answers``); None for a reply
    decoded alone."""
    position: int
    """1: the next reply to start."""
    queued: int
    """Replies waiting, this one included."""
    in_flight: int
    """Replies generating now."""


FinishReason = Literal["stop", "length", "cancelled", "context_full"]


class Done(_Event):
    type: Literal["done"] = "done"
    reply: int | None = None
    """Which of the replies decoded together this event belongs to (the id the batch
    gave it; 0..n-1 for the N answers of ``ChatEngine.answers``); None for a reply
    decoded alone."""
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


class Error(_Event):
    type: Literal["error"] = "error"
    reply: int | None = None
    """Which of the replies decoded together this event belongs to (the id the batch
    gave it; 0..n-1 for the N answers of ``ChatEngine.answers``); None for a reply
    decoded alone."""
    code: str
    """Stable machine-readable code, e.g. ``prompt_too_long``."""
    message: str
    """One line for a person."""
