"""OpenAI's chat completions on the shared engine: the request body turned into a
:class:`~engine.api.ChatRequest`, and the engine's events turned into a
``chat.completion`` or a stream of ``chat.completion.chunk`` objects.

Honoured: ``messages`` (text, or text parts), ``max_tokens`` /
``max_completion_tokens``, ``temperature``, ``top_p``, ``seed``, ``stop``,
``response_format`` (``json_object``, ``json_schema``: decoded under the engine's
grammar), ``stream`` with ``stream_options.include_usage``, and llama.cpp's
``top_k``, ``min_p``, ``repeat_penalty`` and ``ignore_eos``. ``model`` is not checked:
the server has one. Other fields are accepted and ignored, as most servers do.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.api import ChatMessage, ChatRequest, check_prompt
from engine.config import SamplingConfig, describe_validation_error
from engine.events import Done, Error, Event, PromptEvaluated, TokenChunk
from engine.serve.errors import ApiError, status_for

_ROLES = {"system": "system", "developer": "system", "user": "user",
          "assistant": "assistant"}


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[_Part] | None = None


class ChatCompletionBody(BaseModel):
    """The fields of ``POST /v1/chat/completions`` that the server reads."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    messages: list[_Message] = Field(min_length=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=1)
    response_format: dict[str, Any] | None = None
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repeat_penalty: float | None = Field(None, ge=0.0)
    ignore_eos: bool = False

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 16 or any(not s for s in stops):
            raise ApiError(400, "stop: up to 16 strings, none empty", param="stop")
        return stops


def parse_body(data: Any) -> ChatCompletionBody:
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    try:
        return ChatCompletionBody.model_validate(data)
    except ValidationError as exc:
        message = describe_validation_error(exc)
        return _raise(400, message, param=message.split(":", 1)[0])


def _raise(status: int, message: str, param: str | None = None) -> Any:
    raise ApiError(status, message, param=param)


def to_request(body: ChatCompletionBody, default: SamplingConfig) -> ChatRequest:
    """The engine's request. Raises ApiError, and PromptError for a message that
    cannot be sent (empty, not UTF-8)."""
    messages = tuple(_message(i, m) for i, m in enumerate(body.messages))
    if messages[-1].role != "user":
        raise ApiError(400, "the last message must be the user's: it is what the reply "
                       "answers", param="messages")
    given = {"max_tokens": body.max_completion_tokens or body.max_tokens,
             "temperature": body.temperature, "top_p": body.top_p, "seed": body.seed,
             "top_k": body.top_k, "min_p": body.min_p, "repeat_penalty": body.repeat_penalty}
    sampling = default.model_copy(update={k: v for k, v in given.items() if v is not None})
    return ChatRequest(messages=messages, sampling=sampling, ignore_eos=body.ignore_eos,
                       constraint=_constraint(body.response_format))


def _message(index: int, message: _Message) -> ChatMessage:
    role = _ROLES.get(message.role)
    if role is None:
        raise ApiError(400, f"messages[{index}]: role {message.role!r} is not supported "
                       "(system, developer, user, assistant)", param="messages")
    content = message.content
    if isinstance(content, list):
        if any(part.type != "text" or part.text is None for part in content):
            raise ApiError(400, f"messages[{index}]: only text content parts are supported",
                           param="messages")
        content = "".join(part.text or "" for part in content)
    if content is None:
        raise ApiError(400, f"messages[{index}]: no content", param="messages")
    check_text(content)
    return ChatMessage(role=role, content=content)  # a user's empty text: PromptError


def check_text(text: str) -> None:
    """Every message must be UTF-8 (the user's is also checked for emptiness when it
    is made): raises PromptError otherwise."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        check_prompt(text)


def _constraint(rf: dict[str, Any] | None) -> dict[str, Any] | None:
    """``response_format`` as an OutputSpec's fields (the engine decodes under its
    grammar), or None for text."""
    if rf is None or rf.get("type") in (None, "text"):
        return None
    if rf["type"] == "json_object":
        schema = rf.get("schema")  # llama-cpp-python's form carries one here
    elif rf["type"] == "json_schema":
        spec = rf.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise ApiError(400, "response_format.json_schema.schema: expected a JSON Schema "
                           "object", param="response_format")
    else:
        raise ApiError(400, f"response_format: type {rf['type']!r} is not supported (text, "
                       "json_object, json_schema)", param="response_format")
    if schema is not None and not isinstance(schema, dict):
        raise ApiError(400, "response_format.schema: expected an object",
                       param="response_format")
    return {"format": "json", "schema": schema}


class StopWatcher:
    """Cuts the reply at the first stop string, holding back any tail that could be
    the start of one until the next text decides."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = stops
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """What may be sent now; sets ``stopped`` when a stop string matched."""
        if not self.stops:
            return text
        pending = self._held + text
        hits = [i for i in (pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            self._held = ""
            return pending[:min(hits)]
        keep = max((n for s in self.stops for n in range(len(s) - 1, 0, -1)
                    if pending.endswith(s[:n])), default=0)
        self._held = pending[len(pending) - keep:] if keep else ""
        return pending[:len(pending) - keep]

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held


FinishReason = Literal["stop", "length"]


class Completion:
    """One reply as OpenAI shapes it, built from the engine's events."""

    def __init__(self, model: str, stops: list[str]) -> None:
        self.id = f"chatcmpl-{secrets.token_hex(12)}"
        self.created = int(time.time())
        self.model = model
        self.watch = StopWatcher(stops)
        self.parts: list[str] = []
        self.prompt_tokens = 0
        self.cached_tokens: int | None = None
        self.completion_tokens = 0
        self.finish: FinishReason | None = None
        self.error: Error | None = None

    def take(self, event: Event) -> str:
        """The text ``event`` adds to the reply (after the stop strings); the reply is
        over once ``finish`` or ``error`` is set."""
        if isinstance(event, PromptEvaluated):
            self.prompt_tokens = event.prompt_tokens
            self.cached_tokens = event.reused_tokens
        elif isinstance(event, TokenChunk):
            self.completion_tokens += len(event.token_ids)
            text = self.watch.feed(event.text)
            if self.watch.stopped:
                self.finish = "stop"
            self.parts.append(text)
            return text
        elif isinstance(event, Done):
            self.prompt_tokens = event.prompt_tokens
            self.completion_tokens = event.completion_tokens
            self.cached_tokens = event.reused_tokens
            self.finish = "stop" if event.finish_reason == "stop" else "length"
            text = self.watch.flush()
            self.parts.append(text)
            return text
        elif isinstance(event, Error):
            self.error = event
        return ""

    @property
    def over(self) -> bool:
        return self.finish is not None or self.error is not None

    def usage(self) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens}
        if self.cached_tokens is not None:
            usage["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        return usage

    def whole(self) -> dict[str, Any]:
        """The non-streamed ``chat.completion``."""
        return {"id": self.id, "object": "chat.completion", "created": self.created,
                "model": self.model, "choices": [{
                    "index": 0, "message": {"role": "assistant", "content": "".join(self.parts)},
                    "finish_reason": self.finish, "logprobs": None}],
                "usage": self.usage()}

    def chunk(self, delta: dict[str, Any], finish: str | None = None,
              usage: bool = False) -> str:
        """One SSE ``data:`` line of a ``chat.completion.chunk``."""
        body: dict[str, Any] = {
            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish,
                         "logprobs": None}]}
        if usage:
            body["usage"] = self.usage()
        return sse(body)

    def usage_chunk(self) -> str:
        """``stream_options.include_usage``'s last chunk: no choices, the usage."""
        return sse({"id": self.id, "object": "chat.completion.chunk",
                    "created": self.created, "model": self.model, "choices": [],
                    "usage": self.usage()})

    def error_status(self) -> int:
        assert self.error is not None
        return status_for(self.error.code)


def sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data)}\n\n"
