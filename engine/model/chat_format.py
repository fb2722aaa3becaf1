"""Render a conversation into the text a model was trained to continue.

The GGUF's own chat template is used when its metadata has one, rendered in Jinja's
sandbox under time and size limits (``chat_template.py``: a model file is untrusted
input). Otherwise a built-in format is chosen by architecture; the bundled Gemma 3 270M
has no template, so Gemma's turn markers come from here.

A template is tried on a small conversation when the model loads. One that does not
parse, fails, or hits a limit there is replaced by the architecture's built-in format,
and the format's ``note`` says why (the ``model_loaded`` event carries it). One that
fails later on a real conversation renders that conversation in the built-in format and
says so once, through ``take_fallback``; after a limit (a template that loops or builds
too much) it is not tried again. Nothing here raises past the format.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from engine.api import ChatMessage
from engine.errors import ModelLoadError
from engine.events import ChatFormatFallback
from engine.model.chat_template import compile_template
from engine.model.template_limits import (
    DEFAULT_LIMITS,
    Limits,
    RenderCancelled,
    TemplateLimit,
    TemplateProblem,
    TemplateRefused,
    one_line,
)

_SENTINEL = "\ue001"  # a private-use character no template or tokenizer gives meaning to
TEST_CONVERSATION = (
    ChatMessage(role="system", content="You are a helpful assistant."),
    ChatMessage(role="user", content="Hello."),
    ChatMessage(role="assistant", content="Hello! How can I help?"),
    ChatMessage(role="user", content="What is 2 + 2?"),
)


class ChatFormat(Protocol):
    name: str
    note: str
    """Why this format, when it is not simply the model's template or the one asked
    for (a template that failed when the model loaded); empty otherwise."""

    def render(self, messages: Sequence[ChatMessage]) -> str:
        """The prompt text for ``messages``, ending where the assistant's reply starts."""
        ...

    def turn_ends(self) -> list[str]:
        """What the format writes after a finished reply (the end-of-turn marker first),
        for each format the conversation may be rendered in."""
        ...

    def take_fallback(self) -> ChatFormatFallback | None:
        """The fallback a render since the last call made, if any (said once)."""
        ...


@dataclass(frozen=True)
class MarkerFormat:
    """A format made of per-role prefixes and one turn suffix."""

    name: str
    turn_prefix: dict[str, str]
    turn_suffix: str
    system_in_first_user: bool = False
    """Gemma has no system role: its system text opens the first user turn."""
    note: str = ""

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

    def turn_ends(self) -> list[str]:
        return [self.turn_suffix]

    def take_fallback(self) -> ChatFormatFallback | None:
        return None


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
    """The GGUF's own Jinja chat template, sandboxed and limited. ``render`` raises
    TemplateProblem; :class:`TemplateWithFallback` is what the engine uses."""

    name = "gguf-template"
    note = ""

    def __init__(self, source: str, bos_token: str, eos_token: str, *,
                 tokenizer_adds_bos: bool = False, limits: Limits = DEFAULT_LIMITS) -> None:
        self.template = compile_template(source, limits)
        self.limits = limits
        self.bos, self.eos = bos_token, eos_token
        self.strip_bos = tokenizer_adds_bos and bool(bos_token)
        """llama.cpp's tokenizer adds the BOS token itself: a template that writes it
        too would give the prompt two."""
        self.fold_system = False
        """The template refuses a system message: it opens the first user message."""

    def render(self, messages: Sequence[ChatMessage], *,
               add_generation_prompt: bool = True) -> str:
        turns = [m.model_dump() for m in messages]
        if self.fold_system:
            return self._render(fold_system(turns), add_generation_prompt)
        try:
            return self._render(turns, add_generation_prompt)
        except TemplateRefused:
            if not (turns and turns[0]["role"] == "system"):
                raise
            return self._render(fold_system(turns), add_generation_prompt)

    def _render(self, turns: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        try:
            text = self.template.render(
                {"messages": turns, "add_generation_prompt": add_generation_prompt,
                 "bos_token": self.bos, "eos_token": self.eos, "tools": None,
                 "documents": None},
                input_chars=sum(len(t["content"]) for t in turns))
        except (TemplateProblem, RenderCancelled):
            raise
        except Exception as exc:  # an undefined name, a type error, a recursion...
            raise TemplateProblem(one_line(exc)) from None
        if self.strip_bos and text.startswith(self.bos):
            text = text[len(self.bos):]
        return text

    def check(self) -> str:
        """Render the test conversation (system, user, assistant, user); the note to show,
        if any. Raises TemplateProblem when the template cannot be used."""
        turns = [m.model_dump() for m in TEST_CONVERSATION]
        try:
            if not _leaves_out(self._render(turns, True)):
                return ""
        except TemplateRefused:  # "System role not supported", or roles that must alternate
            pass
        # Refused, or the system message silently dropped: the system text goes where
        # such models are trained to read it, at the start of the first user message.
        if _leaves_out(self._render(fold_system(turns), True)):
            raise TemplateProblem("its output leaves out part of the conversation")
        self.fold_system = True
        return "the chat template takes no system message: it opens the first user message"

    def turn_ends(self) -> list[str]:
        try:
            text = self.render([ChatMessage(role="user", content="Hello."),
                                ChatMessage(role="assistant", content=_SENTINEL)],
                               add_generation_prompt=False)
        except TemplateProblem:
            return []
        return [text.partition(_SENTINEL)[2]] if _SENTINEL in text else []

    def take_fallback(self) -> ChatFormatFallback | None:
        return None


def _leaves_out(text: str) -> bool:
    return any(m.content not in text for m in TEST_CONVERSATION)


def fold_system(turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The system message moved to the start of the first user message."""
    if not turns or turns[0]["role"] != "system":
        return turns
    system, rest = turns[0]["content"], turns[1:]
    for i, turn in enumerate(rest):
        if turn["role"] == "user":
            joined = f"{system}\n\n{turn['content']}" if system else turn["content"]
            return [*rest[:i], {**turn, "content": joined}, *rest[i + 1:]]
    return rest


class TemplateWithFallback:
    """The GGUF's template, and the built-in format a conversation is rendered in when
    the template fails on it."""

    def __init__(self, template: TemplateFormat, fallback: MarkerFormat, note: str = "") -> None:
        self.template, self.fallback, self.note = template, fallback, note
        self.given_up = ""
        """Why the template is no longer tried (it hit a limit); empty while it is."""
        self._pending: ChatFormatFallback | None = None

    @property
    def name(self) -> str:
        return self.fallback.name if self.given_up else self.template.name

    def render(self, messages: Sequence[ChatMessage]) -> str:
        if not self.given_up:
            started = time.monotonic()
            try:
                return self.template.render(messages)
            except TemplateProblem as exc:
                self._fell_back(exc, time.monotonic() - started)
        return self.fallback.render(messages)

    def _fell_back(self, exc: TemplateProblem, elapsed: float) -> None:
        # A failure that took a good part of the time limit would cost it again at every
        # render (several a turn): such a template is given up on, like one over a limit.
        if isinstance(exc, TemplateLimit) or elapsed > self.template.limits.seconds / 4:
            self.given_up = exc.reason
        for_now = "from now on" if self.given_up else "for this conversation"
        self._pending = ChatFormatFallback(
            chat_format=self.fallback.name, reason=exc.reason, given_up=bool(self.given_up),
            message=f"the model's chat template failed ({exc.reason}): the prompt is "
                    f"rendered in the built-in {self.fallback.name} format {for_now}")

    def turn_ends(self) -> list[str]:
        return [*self.template.turn_ends(), *self.fallback.turn_ends()]

    def take_fallback(self) -> ChatFormatFallback | None:
        event, self._pending = self._pending, None
        return event


def builtin_for(architecture: str, is_single_token: Callable[[str], bool]) -> MarkerFormat:
    """The built-in format for a model without a usable template."""
    if architecture.startswith("gemma"):
        return GEMMA
    if is_single_token("<|eot_id|>"):
        return LLAMA3
    return CHATML


def choose_format(
    requested: str,
    architecture: str,
    template: str | None,
    bos_token: str,
    eos_token: str,
    is_single_token: Callable[[str], bool],
    *,
    tokenizer_adds_bos: bool = False,
    limits: Limits = DEFAULT_LIMITS,
) -> ChatFormat:
    """Pick the turn format: an explicit name, the GGUF template (when it renders a test
    conversation), or the built-in one for the architecture."""
    if requested != "auto":
        if requested not in BUILTIN_FORMATS:
            names = ", ".join(["auto", *BUILTIN_FORMATS])
            raise ModelLoadError(f"unknown chat format {requested!r} (choose from {names})")
        return BUILTIN_FORMATS[requested]
    fallback = builtin_for(architecture, is_single_token)
    if not template:
        return fallback
    try:
        checked = TemplateFormat(template, bos_token, eos_token,
                                 tokenizer_adds_bos=tokenizer_adds_bos, limits=limits)
        note = checked.check()
    except TemplateProblem as exc:
        return replace(fallback, note=f"the model's chat template failed a test conversation "
                                      f"({exc.reason}): using the built-in {fallback.name} "
                                      f"format")
    return TemplateWithFallback(checked, fallback, note)
