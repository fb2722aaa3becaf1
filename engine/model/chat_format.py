"""Render a conversation into the text a model was trained to continue.

The GGUF's own chat template is used when its metadata has one, rendered in Jinja's
immutable sandbox (a model file is untrusted input). Otherwise a built-in format is
chosen by architecture; the bundled Gemma 3 270M has no template, so Gemma's turn
markers come from here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from engine.api import ChatMessage
from engine.errors import ModelLoadError


class ChatFormat(Protocol):
    name: str

    def render(self, messages: Sequence[ChatMessage]) -> str:
        """The prompt text for ``messages``, ending where the assistant's reply starts."""
        ...


@dataclass(frozen=True)
class MarkerFormat:
    """A format made of per-role prefixes and one turn suffix."""

    name: str
    turn_prefix: dict[str, str]
    turn_suffix: str
    system_in_first_user: bool = False
    """Gemma has no system role: its system text opens the first user turn."""

    def render(self, messages: Sequence[ChatMessage]) -> str:
        parts: list[str] = []
        pending_system = ""
        for msg in messages:
            if msg.role == "system" and self.system_in_first_user:
                pending_system += msg.content + "\n\n" if msg.content else ""
                continue
            content = msg.content
            if msg.role == "user" and pending_system:
                content, pending_system = pending_system + content, ""
            parts.append(self.turn_prefix[msg.role] + content + self.turn_suffix)
        parts.append(self.turn_prefix["assistant"])
        return "".join(parts)


GEMMA = MarkerFormat(
    name="gemma",
    turn_prefix={"user": "<start_of_turn>user\n", "assistant": "<start_of_turn>model\n"},
    turn_suffix="<end_of_turn>\n",
    system_in_first_user=True,
)
LLAMA3 = MarkerFormat(
    name="llama3",
    turn_prefix={
        role: f"<|start_header_id|>{role}<|end_header_id|>\n\n"
        for role in ("system", "user", "assistant")
    },
    turn_suffix="<|eot_id|>",
)
CHATML = MarkerFormat(
    name="chatml",
    turn_prefix={role: f"<|im_start|>{role}\n" for role in ("system", "user", "assistant")},
    turn_suffix="<|im_end|>\n",
)
BUILTIN_FORMATS: dict[str, MarkerFormat] = {f.name: f for f in (GEMMA, LLAMA3, CHATML)}


class TemplateFormat:
    """The GGUF's own Jinja chat template, sandboxed."""

    name = "gguf-template"

    def __init__(self, source: str, bos_token: str, eos_token: str) -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise_exception
        try:
            self._template = env.from_string(source)
        except TemplateError as exc:
            raise ModelLoadError(f"the model's chat template does not parse: {exc}") from None
        self._bos, self._eos = bos_token, eos_token

    def render(self, messages: Sequence[ChatMessage]) -> str:
        try:
            return self._template.render(
                messages=[m.model_dump() for m in messages],
                add_generation_prompt=True,
                bos_token=self._bos,
                eos_token=self._eos,
            )
        except TemplateError as exc:
            raise ModelLoadError(f"the model's chat template failed: {exc}") from None


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def choose_format(
    requested: str,
    architecture: str,
    template: str | None,
    bos_token: str,
    eos_token: str,
    is_single_token: Callable[[str], bool],
) -> ChatFormat:
    """Pick the turn format: an explicit name, the GGUF template, or by architecture."""
    if requested != "auto":
        if requested not in BUILTIN_FORMATS:
            names = ", ".join(["auto", *BUILTIN_FORMATS])
            raise ModelLoadError(f"unknown chat format {requested!r} (choose from {names})")
        return BUILTIN_FORMATS[requested]
    if template:
        return TemplateFormat(template, bos_token, eos_token)
    if architecture.startswith("gemma"):
        return GEMMA
    if is_single_token("<|eot_id|>"):
        return LLAMA3
    return CHATML
