"""The OpenAI chat-completions wire format: request bodies and streamed chunks.

Servers differ in what they accept beyond the standard fields, so the body is built
for the server's kind (see :mod:`engine.backends.remote.probe`): llama.cpp's servers take
``top_k``/``min_p``/``repeat_penalty`` and a GBNF ``grammar``; vLLM takes ``top_k``,
``min_p`` and ``repetition_penalty``; others get the standard fields only. Chunks are
parsed leniently: unknown fields are kept, absent ones are None, never guessed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from engine.api import ChatMessage
from engine.config import SamplingConfig
from engine.structured.spec import OutputSpec, gbnf_for

ServerKind = Literal["llama-server", "llama-cpp-python", "vllm", "ollama", "openai-compatible"]

_LLAMA_KINDS = ("llama-server", "llama-cpp-python")


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


class Timings(_Lenient):
    """llama-server's per-response ``timings`` (absent elsewhere)."""

    prompt_n: int | None = None
    """Prompt tokens evaluated for this request."""
    prompt_ms: float | None = None
    prompt_per_second: float | None = None
    predicted_n: int | None = None
    predicted_ms: float | None = None
    predicted_per_second: float | None = None
    cache_n: int | None = None
    """Prompt tokens reused from the slot's KV cache."""
    draft_n: int | None = None
    """Tokens drafted by speculative decoding."""
    draft_n_accepted: int | None = None


class PromptDetails(_Lenient):
    cached_tokens: int | None = None


class Usage(_Lenient):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    prompt_tokens_details: PromptDetails | None = None


class Delta(_Lenient):
    content: str | None = None


class Choice(_Lenient):
    delta: Delta | None = None
    finish_reason: str | None = None


class Chunk(_Lenient):
    """One ``data:`` event of a streamed chat completion."""

    choices: list[Choice] = []
    usage: Usage | None = None
    timings: Timings | None = None
    error: dict[str, Any] | str | None = None
    """Some servers report a failure inside the stream instead of as a status."""

    @property
    def text(self) -> str:
        return "".join(c.delta.content for c in self.choices
                       if c.delta is not None and c.delta.content)

    @property
    def finish_reason(self) -> str | None:
        return next((c.finish_reason for c in self.choices if c.finish_reason), None)


@dataclass(frozen=True)
class ConstraintForm:
    """One way of asking a server to enforce an OutputSpec."""

    name: str
    """For messages: ``response_format json_schema``, ``grammar`` ..."""
    fields: dict[str, Any] = field(default_factory=dict)


def constraint_forms(spec: OutputSpec, kind: ServerKind) -> list[ConstraintForm]:
    """The request fields that make ``spec`` binding on a server of ``kind``, best
    first; empty when the server has no way to enforce it. ValueError when the schema
    cannot be compiled (llama.cpp's servers compile it with the same converter as
    :func:`gbnf_for`, so it is checked here before anything is sent)."""
    grammar_ok = kind in _LLAMA_KINDS
    grammar = gbnf_for(spec) if grammar_ok else None  # raises for a bad schema
    forms: list[ConstraintForm] = []
    if spec.format == "json":
        schema = spec.json_schema
        if kind == "llama-cpp-python":
            # Its request model knows only "text" and "json_object" (with an optional
            # schema), and rejects "json_schema" outright.
            rf: dict[str, Any] = {"type": "json_object"}
            if schema is not None:
                rf["schema"] = schema
            forms.append(ConstraintForm("response_format json_object",
                                        {"response_format": rf}))
        elif schema is not None:
            forms.append(ConstraintForm("response_format json_schema", {"response_format": {
                "type": "json_schema",
                "json_schema": {"name": "reply", "schema": schema, "strict": True}}}))
        else:
            forms.append(ConstraintForm("response_format json_object",
                                        {"response_format": {"type": "json_object"}}))
    if grammar is not None:
        forms.append(ConstraintForm("grammar", {"grammar": grammar}))
    return forms


def chat_body(messages: Sequence[ChatMessage], sampling: SamplingConfig, model: str,
              kind: ServerKind, *, ignore_eos: bool = False,
              constraint: ConstraintForm | None = None) -> dict[str, Any]:
    """The JSON body of a streamed ``POST /chat/completions``."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": m.role, "content": m.content} for m in messages],
        "stream": True,
        # Usage in the last chunk (vLLM, llama-server, Ollama); others ignore it.
        "stream_options": {"include_usage": True},
        "max_tokens": sampling.max_tokens,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
    }
    if sampling.seed is not None:
        body["seed"] = sampling.seed
    if kind in _LLAMA_KINDS:
        body.update(top_k=sampling.top_k, min_p=sampling.min_p,
                    repeat_penalty=sampling.repeat_penalty)
        if kind == "llama-server":
            body.update(repeat_last_n=sampling.repeat_last_n, cache_prompt=True)
    elif kind == "vllm":
        body.update(top_k=sampling.top_k if sampling.top_k > 0 else -1,
                    min_p=sampling.min_p, repetition_penalty=sampling.repeat_penalty)
    if ignore_eos and kind in ("llama-server", "vllm"):
        body["ignore_eos"] = True
    if constraint is not None:
        body.update(constraint.fields)
    return body


def finish_reason(raw: str | None) -> Literal["stop", "length"]:
    """OpenAI's reasons folded onto the engine's: only ``length`` means cut short."""
    return "length" if raw == "length" else "stop"
