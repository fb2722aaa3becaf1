"""What ``kvchat bench`` measures and the load settings both anchors share.

Fairness starts here: raw llama-cpp-python and kvchat's engine are given the same
:class:`LoadSettings` (context, threads, batch sizes, GPU layers, KV type, flash
attention), resolved once from the memory plan, so neither side gets a better split.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from engine.batch.pace import FLOOR_TOKENS
from engine.errors import ConfigError

PROMPT_SEED = ("The keeper of the lighthouse wrote every night in a ledger: the wind, the "
               "ships that passed, the colour of the sea, and what the gulls were doing. ")
"""Text repeated to reach the prompt length: plain words, so any tokenizer (the
synthetic shapes' byte-fallback one included) turns it into ordinary tokens."""

Progress = Callable[[str, int, int], None]
"""Called with (stage description, steps done, steps in all)."""

EXTRAS = ("speculative", "eviction", "tui")
"""Figures ``--with`` adds, each measured by one of the repository's benchmarks:
speculative decoding's speedup, eviction cost against re-evaluation, and the app's
decode speed against ``kvchat ask`` while it streams."""


@dataclass(frozen=True)
class BenchConfig:
    """One ``kvchat bench`` run."""

    model: Path | None = None
    """GGUF to measure; empty with no shape means the bundled model."""
    shape: str | None = None
    """``NAME:QUANT``: synthesize this built-in shape (random weights) and measure it."""
    models_dir: Path | None = None
    """Where synthesized shapes are written and reused (default: the user cache)."""
    tokens: int = 256
    """Tokens decoded per repetition, exactly (end of generation banned)."""
    prompt_tokens: int = 512
    """About this many prompt tokens (the prompt is plain text repeated)."""
    reps: int = 5
    n_ctx: int = 4096
    n_threads: int | None = None
    n_batch: int = 512
    n_ubatch: int = 512
    n_gpu_layers: int = -1
    """-1: as many as the memory plan fits in the budget."""
    memory_budget: str | None = None
    flash_attn: bool = True
    llama_bench: Path | None = None
    """llama.cpp's own ``llama-bench`` binary, built from the same source: a third
    anchor (its C++ loop, no sampling) when given."""
    profile: bool = True
    """One extra engine run with timers around llama_decode and the sampler."""
    extras: tuple[str, ...] = ()
    """Opt-in figures measured by the repository's benchmarks: ``speculative``,
    ``eviction`` (bundled model only; each takes minutes on a CPU)."""
    bandwidth_bytes: int = 1 << 30
    parallel: tuple[int, ...] = ()
    """Measure N replies decoded together (``bench.parallel``) at each N given, instead
    of the single-reply paths."""
    kv_layouts: tuple[str, ...] = ("shared",)
    """With ``parallel``: the engine's KV layouts to measure, each against the
    llama-batched-bench run laid out alike (shared: ``-kvu``; split: its default)."""
    join_tokens: int = 2000
    """With ``parallel``: a prompt this long joins N - 1 streaming replies (largest N);
    0 leaves it out."""
    batched_bench: Path | None = None
    """llama.cpp's ``llama-batched-bench`` binary: the anchor under load."""
    server_python: Path | None = None
    """A Python with llama-cpp-python and its server extras: its server answers the same
    concurrent requests (the second anchor under load)."""


@dataclass(frozen=True)
class LoadSettings:
    """What both anchors load the model with."""

    model: str
    n_ctx: int
    n_threads: int
    n_batch: int
    n_ubatch: int
    n_gpu_layers: int
    """Layers on the GPU, the output layer counting as one (0 on a CPU build)."""
    n_layers: int
    kv_type: str
    flash_attn: bool
    backend: str
    planned_bytes: int | None = None
    """The memory plan's total (weights, KV cache, compute buffers)."""
    verdict: str = ""


@dataclass
class Sample:
    """One repetition of one path, as its child process reports it."""

    path: str
    prompt_tokens: int
    completion_tokens: int
    ttft_s: float
    prompt_tokens_per_s: float
    decode_tokens_per_s: float
    rss_bytes: int | None = None
    gpu_used_bytes: int | None = None
    extra: dict[str, float] = field(default_factory=dict)


def fit_prompt(count: Callable[[str], int], target_tokens: int) -> str:
    """The longest prefix of the repeated text whose whole prompt (``count``: the text
    rendered by the chat template, turn markers and any default system prompt
    included, tokenized without BOS) stays within ``target_tokens`` less one for BOS.

    Both paths call this with the same vocabulary, so they get the same text; the
    search is by characters because tokenizers differ widely (the synthetic shapes'
    byte-fallback vocabulary spends a token per character, Gemma's ~4 characters).
    """
    goal = max(1, target_tokens - 1)
    text = "Continue this ledger.\n\n" + PROMPT_SEED * (target_tokens * 8 // len(PROMPT_SEED) + 1)
    lo, hi = 1, len(text)
    while lo < hi:  # the largest n with count(text[:n]) <= goal
        mid = (lo + hi + 1) // 2
        if count(text[:mid]) <= goal:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo]


def check_config(config: BenchConfig) -> None:
    """Reject bad input before anything is loaded (a one-line error, exit code 2)."""
    if config.model is not None and config.shape is not None:
        raise ConfigError("give a model file or --shape, not both")
    if config.model is not None:
        path = Path(config.model).expanduser()
        if not path.is_file():
            raise ConfigError(f"model file {path} does not exist")
    if config.shape is not None:
        from engine.model.memory.shapes import parse_shape

        parse_shape(config.shape)  # raises ConfigError naming the known shapes
    for name in config.extras:
        if name not in EXTRAS:
            raise ConfigError(f"unknown extra figure {name!r}: choose {', '.join(EXTRAS)}")
    if config.extras and (config.model is not None or config.shape is not None):
        raise ConfigError("the speculative, eviction and tui figures run on the bundled "
                          "model only")
    if config.llama_bench is not None and not Path(config.llama_bench).is_file():
        raise ConfigError(f"llama-bench binary {config.llama_bench} does not exist")
    if config.parallel:
        _check_parallel(config)
    if config.prompt_tokens + config.tokens + 8 > config.n_ctx:
        raise ConfigError(f"prompt ({config.prompt_tokens}) + tokens ({config.tokens}) do not "
                          f"fit a {config.n_ctx}-token context: raise --ctx")


def join_stream_tokens(config: BenchConfig) -> int:
    """max_tokens of each streaming reply in the join measurement: enough to stream on
    until the joining prompt has its first tokens, were it read only the least a step
    carries beside streaming replies; the prompt joins after a quarter of them, and
    the streams stop 16 tokens after its last one anyway."""
    return max(config.tokens, 160, (config.join_tokens // FLOOR_TOKENS + 32) * 4 // 3)


def cells_needed(config: BenchConfig) -> int:
    """KV cells the largest N's replies reserve (prompt and max_tokens each), or the
    join measurement's streams and joining prompt, whichever is more."""
    most = max(config.parallel)
    need = most * (config.prompt_tokens + config.tokens + 8)
    if config.join_tokens and most > 1:
        need = max(need, (most - 1) * (config.prompt_tokens + join_stream_tokens(config) + 8)
                   + config.join_tokens + 16)
    return need


def _check_parallel(config: BenchConfig) -> None:
    if any(not 1 <= n <= 64 for n in config.parallel):
        raise ConfigError("--parallel takes numbers from 1 to 64, e.g. 1,2,4,8")
    for path, what in ((config.batched_bench, "llama-batched-bench binary"),
                       (config.server_python, "server Python")):
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"{what} {path} does not exist")
    if config.extras or config.llama_bench is not None:
        raise ConfigError("--parallel measures the engine under load: leave out --with and "
                          "--llama-bench (use --batched-bench)")
    most, need = max(config.parallel), cells_needed(config)
    if need > config.n_ctx:
        raise ConfigError(f"{most} replies of {config.prompt_tokens} + {config.tokens} tokens"
                          + (f" and a {config.join_tokens}-token prompt joining"
                             if config.join_tokens and most > 1 else "")
                          + f" need {need} cells: raise --ctx above {config.n_ctx}")
