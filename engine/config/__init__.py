"""kvchat's settings: nested pydantic models, loaded from one TOML file.

Every model forbids unknown keys, so a typo is an error naming the key instead of a
setting silently ignored; the ``[ui]`` table is the app's, kept here as read and
validated as strictly by the app (``tui.config``). Settings are passed into
constructors; nothing here reads the environment or the disk at import time.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from engine.config.values import _ENV_NAME, budget_bytes, parse_size, redact_userinfo
from engine.config.values import usable_cores as usable_cores
from engine.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True,
                              validate_assignment=True)


class ModelConfig(_Section):
    path: Path | None = None
    """GGUF file to load; empty means the bundled Gemma 3 270M Q4_K_M."""
    n_ctx: int = Field(4096, ge=64, le=1_048_576)
    """Context size in tokens (KV cells) reserved at load."""
    n_batch: int = Field(512, ge=1, le=65_536)
    """Tokens evaluated per llama_decode call while reading a prompt."""
    n_ubatch: int | None = Field(None, ge=1, le=65_536)
    """Tokens per micro-batch (sizes the compute buffer); empty lets the memory plan
    choose 512, 256 or 128."""
    n_outputs_max: int = Field(128, ge=1, le=65_536)
    """Most tokens per micro-batch that get logits: the compute buffer holds this many
    rows of n_vocab floats. A prompt needs one; speculative verification one per
    drafted token plus one. llama.cpp's default (n_batch) costs 512 x n_vocab floats."""
    n_gpu_layers: int = Field(-1, ge=-1)
    """Layers to offload to the GPU (the output layer counts as one); -1 lets the
    memory plan choose as many as fit the budget."""
    kv_type: Literal["auto", "f16", "q8_0", "q4_0"] = "auto"
    """KV cache type; auto means f16 unless only a quantized cache lets the whole model
    fit on the GPU. q8_0 and q4_0 need flash attention."""
    memory_budget: str | None = None
    """Memory the plan may use, e.g. ``36GiB`` or ``24 GB``; empty means the GPU's free
    memory when llama.cpp has a GPU backend, else available system memory."""
    headroom: float = Field(0.05, ge=0.0, lt=0.9)
    """Share of the budget the plan leaves unused."""
    n_threads: int | None = Field(None, ge=1)
    """CPU threads for decoding; empty means one per core."""
    n_threads_batch: int | None = Field(None, ge=1)
    """CPU threads for prompt processing; empty means as many as for decoding."""
    n_threads_verify: int | None = Field(None, ge=1)
    """CPU threads for speculative verification batches (a pending token and its
    drafts, a few rows each); empty means as many as for prompt processing."""
    use_mmap: bool = True
    """Map the weights from the file instead of reading them into memory."""
    flash_attn: bool | None = None
    """Flash attention: true, false, or empty to let llama.cpp decide."""
    greedy_in_graph: Literal["auto", "on", "off"] = "auto"
    """Where greedy replies pick their token. on: inside llama.cpp's graph (an argmax
    next to the logits), so the host reads one id between two graphs instead of a
    128k-262k float row; off: an argmax on the host; auto: in the graph when the output
    layer runs on a GPU (on a CPU backend it only moves the same work between threads)."""
    batch_invariant: Literal["auto", "on", "off"] = "auto"
    """Load so that each row of a verification batch (up to 7) is computed bit for bit
    like a one-token decode: a q8_0 KV cache, flash attention, no repacked weight
    layouts; CPU backend only. Greedy speculation is then identical to plain decoding by
    construction, so ``auto`` speculation also runs under greedy sampling. Costs prompt
    speed (about 0.7x on the bundled model). auto: when speculation is on, every layer
    is on the CPU and kv_type is auto, q8_0 or q4_0; on: always (an error where it
    cannot hold)."""
    chat_format: str = "auto"
    """Turn format: auto (the GGUF's template, else one chosen by architecture) or a
    built-in name: gemma, llama3, chatml."""
    parallel: int = Field(1, ge=1, le=64)
    """Sequences one context holds: replies decoded together in one batch (continuous
    batching, engine/batch/). They share the context's ``n_ctx`` cells (a unified KV
    cache); each reply reserves its prompt and ``max_tokens`` of them. 1: one reply at
    a time, with speculation (the state cache serves both)."""
    kv_layout: Literal["shared", "split"] = "shared"
    """With ``parallel`` > 1, how sequences hold the KV cache. shared: one pool of
    ``n_ctx`` cells (a reply takes what admission gives it; every row's attention reads
    the whole pool's span). split: each sequence its own ``n_ctx / parallel`` cells, as
    llama.cpp's server slots (attention reads only its own, faster with many long
    replies; a reply's context is that share)."""

    @field_validator("memory_budget")
    @classmethod
    def _budget_parses(cls, value: str | None) -> str | None:
        if value is not None:
            parse_size(value)  # its ValueError names the input
        return value


class SamplingConfig(_Section):
    temperature: float = Field(0.7, ge=0.0, le=5.0)
    """0 means greedy decoding."""
    top_k: int = Field(40, ge=0)
    """Keep the k most likely tokens; 0 disables."""
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    min_p: float = Field(0.05, ge=0.0, le=1.0)
    repeat_penalty: float = Field(1.0, ge=0.0)
    """Penalty on tokens seen in the last ``repeat_last_n``; 1.0 disables."""
    repeat_last_n: int = Field(64, ge=0)
    seed: int | None = Field(None, ge=0)
    """Fixed seed for reproducible sampling; empty means a fresh one per reply."""
    max_tokens: int = Field(512, ge=1)
    """Most tokens generated for one reply."""


class ChatConfig(_Section):
    system_prompt: str = "You are a helpful assistant. Answer clearly and concisely."
    """Sent at the start of every conversation; empty for none."""


class KVCacheConfig(_Section):
    """How the KV cache makes room when a conversation outgrows the context."""

    evict: bool = True
    """Slide the window when the cache is full; false stops the reply with
    ``context_full`` instead (plain llama.cpp behaviour)."""
    sink_tokens: int = Field(4, ge=0, le=1024)
    """Tokens at the very start that are never evicted (attention sinks). The system
    prompt is kept too, so this matters when there is none."""
    keep_system_prompt: bool = True
    """Never evict the system prompt's tokens."""
    discard_fraction: float = Field(0.25, gt=0.0, le=0.9)
    """Share of the evictable cells (those after the kept prefix) dropped per eviction:
    larger means fewer, bigger evictions."""
    reply_reserve: int | None = Field(None, ge=0)
    """Cells made free for the reply before it starts; empty means the smaller of
    ``sampling.max_tokens`` and a quarter of the context."""


class CacheConfig(_Section):
    """Saved KV states of conversations (engine/cache/): a conversation that comes back,
    after another one, a restart or a model switch, resumes from its saved state instead
    of being evaluated again."""

    enabled: bool = True
    """Save a conversation's state when another one takes the cache, restore it when a
    prompt shares enough of its tokens; false evaluates every switched-to conversation."""
    ram_budget: str | int | None = None
    """Memory for saved states, e.g. ``512MiB``; empty means 10% of the available
    system memory at start, at most 4 GiB; 0 keeps no state in memory."""
    disk_budget: str | int = "2GiB"
    """Disk for saved states (they outlive the process); 0 keeps none on disk."""
    dir: Path | None = None
    """Where the disk tier lives; empty means ``state-cache/`` in the data dir
    (``$KVCHAT_HOME``, else the platform's data dir)."""
    min_tokens: int = Field(32, ge=1)
    """Fewest prompt tokens a saved state must share with a prompt to be restored (and
    fewest cells a conversation must hold to be saved)."""

    @field_validator("ram_budget", "disk_budget")
    @classmethod
    def _budget_parses(cls, value: str | int | None) -> str | int | None:
        if value is not None:
            budget_bytes(value)  # its ValueError names the input
        return value


class SpeculativeConfig(_Section):
    """Speculative decoding: draft several tokens cheaply, verify them in one batch."""

    mode: Literal["auto", "prompt-lookup", "draft", "off"] = "auto"
    """auto: a draft model when one is set, else prompt lookup (n-grams from the
    conversation), switched off by the controller wherever it does not pay; not under
    greedy sampling, whose output it could change (llama.cpp's batched rows differ
    slightly from one-token decodes, on the CPU and on CUDA). prompt-lookup / draft:
    always, also under greedy sampling. off: plain decoding."""
    draft_model: Path | None = None
    """A smaller GGUF with the same vocabulary as the main model, for ``draft`` mode."""
    max_draft: int = Field(12, ge=1, le=64)
    """Most tokens drafted per round; the length in use follows the acceptance rate."""
    min_ngram: int = Field(2, ge=1, le=16)
    """Shortest match prompt lookup accepts: longer means fewer, better drafts."""
    max_ngram: int = Field(4, ge=1, le=16)
    """Longest suffix prompt lookup tries to find earlier in the conversation."""
    exact: bool = True
    """Under greedy sampling, let a plain decode decide any verified token that leads
    its runner-up by less than ``tie_margin`` logits: llama.cpp's batched kernels
    differ from its one-token path, and such a near-tie could otherwise flip."""
    tie_margin: float = Field(1.0, ge=0.0, le=20.0)
    """Logits. Teacher-forced on the bundled model, batched and one-token greedy
    choices differed only where the top-2 margin was below 0.7; a wider margin costs
    speed (more rounds stop early) for no observed gain."""
    adaptive: bool = True
    """Switch speculation off for the rest of a reply while it costs more time than
    it saves, and back on when the text turns repetitive again."""


class RouterConfig(_Section):
    """How each prompt is routed to a template (templates/ and the config dir's own)."""

    enabled: bool = True
    """Route every message; false sends every message through the ``chat`` template."""
    model_fallback: bool = False
    """When the signals are unsure, ask the loaded model for a one-word route (a
    grammar-constrained answer in a small side context; costs one short prefill)."""
    min_confidence: float = Field(0.5, ge=0.0, le=1.0)
    """Below this confidence the model fallback is asked (when enabled)."""
    tiktoken_file: Path | None = None
    """A local ``.tiktoken`` BPE file for estimating tokens before a model is loaded;
    empty tries tiktoken's cache, then a character-based estimate."""


class EndpointConfig(_Section):
    """One OpenAI-compatible server: llama-server, vLLM, Ollama, LM Studio..."""

    base_url: str
    """The API root, ending in /v1: ``http://127.0.0.1:8080/v1`` (llama-server),
    ``http://127.0.0.1:8000/v1`` (vLLM), ``http://127.0.0.1:11434/v1`` (Ollama)."""
    api_key_env: str | None = None
    """Name of the environment variable holding the API key (never the key itself);
    empty sends no key."""
    model: str | None = None
    """Model name as the server lists it at /v1/models; empty takes the first."""
    timeout: float = Field(60.0, gt=0.0, le=3600.0)
    """Seconds to wait for the server to answer or to send the next part of a reply."""
    connect_timeout: float = Field(5.0, gt=0.0, le=600.0)
    """Seconds to wait for the connection itself."""
    stats: bool = True
    """Read the server's /slots, /props and /metrics after each reply, where it has
    them, for the KV pane."""

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("expected an http:// or https:// URL")
        return value

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.fullmatch(value):
            raise ValueError("expected the NAME of an environment variable, "
                             "not the key itself")
        return value


class BackendConfig(_Section):
    """Where replies are generated: the local llama.cpp model or an HTTP server."""

    kind: Literal["local", "openai"] = "local"
    """local: load the GGUF here with llama.cpp; openai: an OpenAI-compatible server."""
    endpoint: str | None = None
    """Which of ``endpoints`` kind ``openai`` uses; empty takes the only one."""
    endpoints: dict[str, EndpointConfig] = Field(default_factory=dict)
    """Named servers, as ``[backend.endpoints.NAME]`` tables."""

    def selected(self) -> tuple[str, EndpointConfig]:
        """The endpoint kind ``openai`` talks to. ConfigError when none can be chosen."""
        if self.endpoint is not None:
            if self.endpoint not in self.endpoints:
                known = ", ".join(sorted(self.endpoints)) or "none are configured"
                raise ConfigError(f"backend.endpoint: no endpoint named {self.endpoint!r} "
                                  f"({known})")
            return self.endpoint, self.endpoints[self.endpoint]
        if len(self.endpoints) == 1:
            return next(iter(self.endpoints.items()))
        if not self.endpoints:
            raise ConfigError("the openai backend needs a server: give --base-url URL or "
                              "a [backend.endpoints.NAME] table in the config")
        raise ConfigError("backend.endpoint: several endpoints are configured "
                          f"({', '.join(sorted(self.endpoints))}); choose one")


class ServeConfig(_Section):
    """``kvchat serve``: the local model as an HTTP server that several clients share."""

    host: str = "127.0.0.1"
    """Address to listen on. Any address but loopback needs ``api_key_env``."""
    port: int = Field(8411, ge=0, le=65_535)
    """TCP port; 0 takes any free one (the server prints which)."""
    max_queue: int = Field(16, ge=0, le=10_000)
    """Replies that may wait for the engine; one more is refused with HTTP 429."""
    api_key_env: str | None = None
    """Name of the environment variable holding the key every request must send as
    ``Authorization: Bearer KEY`` (never the key itself); empty: no key (loopback only)."""
    drain_s: float = Field(30.0, ge=0.0, le=3600.0)
    """Seconds a stop (Ctrl+C, SIGTERM) waits for the replies in flight to finish."""

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.fullmatch(value):
            raise ValueError("expected the NAME of an environment variable, "
                             "not the key itself")
        return value


class ModelsConfig(_Section):
    """Where ``kvchat models`` and ``--model NAME`` look for GGUF files, besides the
    bundled model, LM Studio, Ollama, the Hugging Face cache and llama.cpp's cache."""

    dirs: list[str] = Field(default_factory=list)
    """Folders searched for ``*.gguf`` files, subfolders included; ``~`` is expanded."""

    @field_validator("dirs")
    @classmethod
    def _expand(cls, value: list[str]) -> list[str]:
        return [os.path.expanduser(entry) for entry in value]


class KvchatConfig(_Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    chat: ChatConfig = Field(default_factory=ChatConfig)
    kv: KVCacheConfig = Field(default_factory=KVCacheConfig)
    speculative: SpeculativeConfig = Field(default_factory=SpeculativeConfig)
    router: RouterConfig = Field(default_factory=RouterConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    ui: dict[str, Any] = Field(default_factory=dict)
    """The ``[ui]`` table as read: the app's own settings (the screen, and whether its
    engine runs in a process of its own), validated by the app (``tui.config``)."""
    backend: BackendConfig = Field(default_factory=BackendConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)


def default_config_path() -> Path:
    """``$KVCHAT_HOME/config.toml`` if set, else the platform's config dir."""
    home = os.environ.get("KVCHAT_HOME")
    if home:
        return Path(home).expanduser() / "config.toml"
    return Path(platformdirs.user_config_dir("kvchat")) / "config.toml"


def load_config(path: Path | None = None) -> KvchatConfig:
    """Load and validate the config file.

    An explicit ``path`` must exist; the default path may be absent (defaults apply).
    Raises :class:`ConfigError` with one line naming the file and the key.
    """
    explicit = path is not None
    path = Path(path).expanduser() if path is not None else default_config_path()
    if not path.exists():
        if explicit:
            raise ConfigError(f"config file not found: {path}")
        return KvchatConfig()
    if path.is_dir():
        raise ConfigError(f"{path} is a directory, not a config file")
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    return parse_config(data, source=str(path))


def parse_config(data: dict[str, Any], source: str = "config") -> KvchatConfig:
    try:
        return KvchatConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe_validation_error(exc)}") from None


def describe_validation_error(exc: ValidationError) -> str:
    """The first problem as ``key.path: message``, plus a count of the rest."""
    errors = exc.errors()
    first = errors[0]
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    else:
        message = first["msg"]
        # A value given where a variable's name belongs is most likely a secret.
        if "input" in first and not isinstance(first["input"], dict | list) \
                and first["loc"][-1:] != ("api_key_env",):
            message += f" (got {redact_userinfo(repr(first['input']))})"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{key}: {message}{more}"

