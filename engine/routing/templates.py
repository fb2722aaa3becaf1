"""Route templates: what each kind of prompt gets, as data a user can edit.

One TOML file per route. The bundled ones live in the ``templates`` package; a user's
own go in the config dir's ``templates/`` folder and replace a bundled one of the same
name. A broken file is one line naming the file and the field, and is skipped: the
others still load.

A template's ``instructions`` travel with the routed user turn, not in the system
prompt: the conversation's rendered prefix then never changes between turns, so the
KV cache is reused whatever route each message takes (see docs/routing.md).
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from engine.config import SamplingConfig, describe_validation_error
from engine.structured.spec import RetryPolicy

BUILTIN_ROUTES = ("code", "qa", "summarize", "chat")
"""The routes the router's signals know; ``chat`` is the fallback."""
FALLBACK_ROUTE = "chat"

Tokens = Annotated[int, Field(ge=1, le=1_048_576)]
Fraction = Annotated[float, Field(gt=0.0, le=1.0)]
Amount = Tokens | Fraction
"""A whole number is tokens; a number with a decimal point is a share of the context."""

OutputFormat = Literal["prose", "json", "code", "list"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True)


class ContextBudget(_Strict):
    """How the context is split between the prompt and the reply."""

    prompt_share: Amount = 0.75
    """Most the conversation and the new message should take: tokens, or a share of
    the context (0.75 = three quarters)."""
    reply_reserve: Amount = 512
    """KV cells freed for the reply before it starts: tokens, or a share of the context.
    The engine caps it at the reply's max_tokens and half the context."""

    def prompt_tokens(self, n_ctx: int) -> int:
        return _resolve(self.prompt_share, n_ctx)

    def reserve_tokens(self, n_ctx: int) -> int:
        return _resolve(self.reply_reserve, n_ctx)


def _resolve(amount: int | float, n_ctx: int) -> int:
    if isinstance(amount, float):
        return max(1, int(amount * n_ctx))
    return min(amount, n_ctx)


class SamplingOverrides(_Strict):
    """Sampling settings this route changes; anything left out keeps the config's."""

    temperature: float | None = Field(None, ge=0.0, le=5.0)
    """0 means greedy decoding."""
    top_k: int | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repeat_penalty: float | None = Field(None, ge=0.0)
    max_tokens: int | None = Field(None, ge=1)
    """Most tokens in one reply on this route."""

    def apply(self, base: SamplingConfig, pinned: Iterable[str] = ()) -> SamplingConfig:
        """``base`` with these overrides, except the fields in ``pinned`` (set explicitly
        by the user, e.g. ``--temp``), which keep their value."""
        keep = set(pinned)
        update = {k: v for k, v in self.model_dump(exclude_none=True).items() if k not in keep}
        return base.model_copy(update=update) if update else base


class RouteTemplate(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")
    """The route's name: lower case, used by ``--route`` and ``/route``."""
    description: str = Field(min_length=1)
    """One line shown by ``kvchat route`` and in the app."""
    instructions: str = ""
    """This route's system prompt. It is sent at the head of each user turn routed here
    (not in the system role), so the conversation's prefix and its KV cache survive a
    change of route."""
    output: OutputFormat = "prose"
    """The reply's expected shape: prose, json, code or list. A structured shape is
    checked after each reply and retried as ``retry`` says."""
    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    """For ``output = "json"``: a JSON Schema (an inline TOML table) the reply must
    validate against; the grammar step is built from it."""
    keywords: tuple[str, ...] = ()
    """Words or phrases that send a prompt here (matched case-insensitively, whole
    words); how a user's own template gets chosen without ``--route``."""
    budget: ContextBudget = Field(default_factory=ContextBudget)
    sampling: SamplingOverrides = Field(default_factory=SamplingOverrides)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)

    @field_validator("json_schema")
    @classmethod
    def _schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        from engine.structured.checks import schema_problem

        if value is not None and (problem := schema_problem(value)):
            raise ValueError(problem)
        return value

    @field_validator("keywords")
    @classmethod
    def _keywords(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        cleaned = tuple(k.strip().lower() for k in value)
        if any(not k for k in cleaned):
            raise ValueError("a keyword is empty")
        return cleaned


def with_instructions(text: str, instructions: str) -> str:
    """The user turn as the model sees it: the route's instructions, then the message."""
    return f"{instructions}\n\n{text}" if instructions else text


@dataclass(frozen=True)
class TemplateSet:
    templates: Mapping[str, RouteTemplate]
    problems: tuple[str, ...] = ()
    """One line per file that could not be used."""
    sources: Mapping[str, str] = field(default_factory=dict)
    """Where each template came from: ``bundled`` or the user file's path."""

    def get(self, name: str) -> RouteTemplate:
        return self.templates[name]

    @property
    def names(self) -> list[str]:
        return sorted(self.templates)


def bundled_template_files() -> list[Path]:
    root = resources.files("templates")
    return sorted(Path(str(p)) for p in root.iterdir() if p.name.endswith(".toml"))


def user_templates_dir(config_path: Path) -> Path:
    """The ``templates/`` folder beside the config file."""
    return config_path.parent / "templates"


def parse_template(path: Path) -> RouteTemplate:
    """One file as a template; ValueError with one line naming the file and field."""
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"template {path}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"template {path}: not valid TOML: {exc}") from None
    try:
        template = RouteTemplate.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"template {path}: {describe_validation_error(exc)}") from None
    if template.name != path.stem:
        raise ValueError(f"template {path}: name: {template.name!r} does not match the "
                         f"file name {path.stem!r}")
    return template


def load_templates(user_dir: Path | None = None) -> TemplateSet:
    """The bundled templates, then the user's (same name replaces). Broken files are
    reported in ``problems`` and skipped; a missing built-in route is a problem too."""
    templates: dict[str, RouteTemplate] = {}
    sources: dict[str, str] = {}
    problems: list[str] = []
    files = [(p, "bundled") for p in bundled_template_files()]
    if user_dir is not None and user_dir.is_dir():
        files += [(p, str(p)) for p in sorted(user_dir.glob("*.toml"))]
    for path, source in files:
        try:
            template = parse_template(path)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        templates[template.name] = template
        sources[template.name] = source
    for name in BUILTIN_ROUTES:
        if name not in templates:  # a broken bundled file: keep routing with defaults
            problems.append(f"template {name}: missing; using built-in defaults")
            templates[name] = RouteTemplate(name=name, description=f"{name} (defaults)")
            sources[name] = "defaults"
    return TemplateSet(templates, tuple(problems), sources)
