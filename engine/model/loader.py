"""Load a GGUF into a llama.cpp model and context, after checking the file ourselves.

Only the engine thread calls this: the model and context it returns belong to it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import llama_cpp
from llama_cpp import _internals

from engine.config import ModelConfig, usable_cores
from engine.errors import ConfigError, ModelDoesNotFit, ModelFileError, ModelLoadError
from engine.events import MemorySnapshot, MemoryStage, ModelLoaded
from engine.model import llama_log
from engine.model.batch_invariance import invariant_config, invariant_rows
from engine.model.bundled import default_model_path
from engine.model.chat_format import ChatFormat, choose_format
from engine.model.devices import compute_backend, list_devices, query_devices
from engine.model.gguf_header import GGUFHeader, read_gguf_header
from engine.model.memory.budget import detect_budget, process_rss
from engine.model.memory.kv_cost import kv_bytes_per_token
from engine.model.memory.planner import MemoryPlan, PlanRequest, UnplannableModel, plan_memory
from engine.model.quant_costs import describe, lookup, model_identity, quant_name

log = logging.getLogger("kvchat.loader")

# A failed GGML_ASSERT prints its line, then by default attaches gdb and dumps every
# thread's stack onto the terminal; the line alone says what went wrong.
os.environ.setdefault("GGML_NO_BACKTRACE", "1")

# llama.cpp marks turn markers and special tokens with this attribute.
TOKEN_ATTR_CONTROL = 1 << 3
# A token the model's authors added whole (some files mark their turn markers so).
TOKEN_ATTR_USER_DEFINED = 1 << 4


@dataclass
class LoadedModel:
    """The llama.cpp objects for one model, owned by the engine thread."""

    header: GGUFHeader
    model: _internals.LlamaModel
    ctx: _internals.LlamaContext
    chat_format: ChatFormat
    info: ModelLoaded
    n_batch: int
    bytes_per_cell: int
    plan: MemoryPlan | None = None
    memory: list[MemorySnapshot] = field(default_factory=list)
    """Memory snapshots: planned, then measured after load."""
    invariant_rows: int = 0
    """Batches of up to this many rows compute each row exactly like a one-token
    decode (engine/model/batch_invariance.py); 0 when not loaded that way."""
    threads: tuple[int, int, int] = (0, 0, 0)
    """CPU threads for one-token decodes, prompt batches, verification batches."""
    turn_end_tokens: frozenset[int] = frozenset()
    """The chat format's end-of-turn markers (``<|im_end|>``, ``<|eot_id|>``,
    ``<end_of_turn>``...): they end a reply even where the file's EOS/EOG metadata
    does not list them."""
    _eog_tokens: list[int] | None = field(default=None, repr=False)
    _pieces: dict[int, bytes] = field(default_factory=dict, repr=False)
    _turn_enders: dict[int, bool] = field(default_factory=dict, repr=False)
    _n_ctx: int = field(default=0, repr=False)

    # The token loop asks these every step: answered from Python, since each ctypes
    # call lets go of the GIL, and getting it back waits while the app's thread runs.
    @property
    def n_ctx(self) -> int:
        if not self._n_ctx:
            self._n_ctx = self.ctx.n_ctx()
        return self._n_ctx

    @property
    def bos(self) -> int:
        return self.model.token_bos()

    def tokenize(self, text: str, *, add_bos: bool) -> list[int]:
        # special=True: turn markers in the rendered prompt become their control tokens.
        return self.model.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)

    def token_piece(self, token: int) -> bytes:
        """The token's bytes (a piece may be part of a UTF-8 character). Cached: the
        wrapper in llama-cpp-python returns its whole 32-byte buffer, NULs included."""
        piece = self._pieces.get(token)
        if piece is None:
            buf = ctypes.create_string_buffer(64)
            n = llama_cpp.llama_token_to_piece(self.model.vocab, token, buf, len(buf), 0, False)
            if n < 0:  # the piece needs -n bytes
                buf = ctypes.create_string_buffer(-n)
                n = llama_cpp.llama_token_to_piece(self.model.vocab, token, buf, -n, 0, False)
            piece = self._pieces[token] = buf.raw[:n]
        return piece

    def ends_turn(self, token: int) -> bool:
        """End of generation, or a control token (a turn marker) the reply must not contain."""
        ends = self._turn_enders.get(token)
        if ends is None:
            ends = self._turn_enders[token] = bool(
                token in self.turn_end_tokens
                or llama_cpp.llama_vocab_is_eog(self.model.vocab, token)
                or self.model.token_get_attr(token) & TOKEN_ATTR_CONTROL)
        return ends

    def eog_tokens(self) -> list[int]:
        """Every end-of-generation token, the format's turn markers included (scanned
        once, for --ignore-eos)."""
        if self._eog_tokens is None:
            vocab = self.model.vocab
            self._eog_tokens = [t for t in range(self.model.n_vocab())
                                if t in self.turn_end_tokens
                                or llama_cpp.llama_vocab_is_eog(vocab, t)]
        return self._eog_tokens

    @contextmanager
    def prompt_threads(self) -> Iterator[None]:
        """Prompt batches on their own thread count, then back to the verification
        count: llama.cpp takes one count for every batch of more than one token, and a
        verification batch is one, a few rows long, that should leave the screen's core
        alone where a prompt may use every core."""
        decode, prompt, verify = self.threads
        if prompt == verify:
            yield
            return
        self.ctx.set_n_threads(decode, prompt)
        try:
            yield
        finally:
            self.ctx.set_n_threads(decode, verify)

    def close(self) -> None:
        self.ctx.close()
        self.model.close()


def plan_for(config: ModelConfig, header: GGUFHeader) -> MemoryPlan:
    """The memory plan for loading ``header`` with ``config`` on this machine."""
    if config.kv_type in ("q8_0", "q4_0") and config.flash_attn is False:
        raise ConfigError(f"model.kv_type {config.kv_type} needs flash attention: set "
                          "model.flash_attn to true or leave it empty")
    budget = detect_budget(config.memory_budget)
    if not has_gpu() and budget.kind != "cpu":
        budget = replace(budget, kind="cpu", device="CPU")
    request = PlanRequest(
        n_ctx=context_cells(config), kv_type=config.kv_type, n_ubatch=config.n_ubatch,
        n_batch=config.n_batch, n_gpu_layers=config.n_gpu_layers,
        flash_attn=config.flash_attn, n_outputs_max=config.n_outputs_max,
        headroom=config.headroom)
    return plan_memory(header, budget, request, source=str(header.path))


def context_cells(config: ModelConfig) -> int:
    """The cells llama.cpp gives a context asked for ``config.n_ctx``: split into
    ``parallel`` streams, each is a multiple of 256 cells (llama.cpp pads them)."""
    if config.parallel < 2 or config.kv_layout != "split":
        return config.n_ctx
    total = -(-config.n_ctx // 256) * 256
    return -(-(total // config.parallel) // 256) * 256 * config.parallel


@dataclass(frozen=True)
class _Settings:
    """What llama.cpp is given: from the memory plan, or from the config alone when
    the model cannot be planned."""

    n_gpu_layers: int
    n_batch: int
    n_ubatch: int
    n_outputs_max: int
    kv_type: str
    flash_attn: bool | None

    @classmethod
    def of(cls, config: ModelConfig, plan: MemoryPlan | None) -> _Settings:
        if plan is not None:
            # A quantized V cache needs flash attention; otherwise the user's choice.
            flash = True if plan.kv_type != "f16" else config.flash_attn
            return cls(plan.n_gpu_layers, plan.n_batch, plan.n_ubatch, plan.n_outputs_max,
                       plan.kv_type, flash)
        kv_type = "f16" if config.kv_type == "auto" else config.kv_type
        return cls(0x7FFFFFFF if config.n_gpu_layers < 0 else config.n_gpu_layers,
                   config.n_batch, config.n_ubatch or min(config.n_batch, 512),
                   config.n_outputs_max, kv_type,
                   True if kv_type != "f16" else config.flash_attn)


def load_model(config: ModelConfig, *, invariant: bool = False) -> LoadedModel:
    """Validate the file, plan its memory, then load it by the plan; ``invariant`` loads
    it batch-invariant (see engine/model/batch_invariance.py).
    Raises ModelFileError (a file kvchat or llama.cpp refuses) / ConfigError /
    ModelLoadError (no context of that size)."""
    rows = invariant_rows(invariant)
    if invariant:
        config = invariant_config(config)
    path = Path(config.path).expanduser() if config.path else default_model_path()
    header = read_gguf_header(path)  # before llama.cpp sees the file
    plan = _plan_if_known(config, header)
    if plan is not None and not plan.fits and plan.budget_source == "given":
        raise ModelDoesNotFit(does_not_fit(header.name, plan))
    settings = _Settings.of(config, plan)
    llama_log.install()
    started = time.perf_counter()
    with llama_log.capture() as log_lines:
        model, ctx = _load(config, settings, path, repack=not invariant)
    try:
        fmt = _chat_format(config, header, model)
    except ModelLoadError:
        ctx.close()
        model.close()
        raise
    bytes_per_cell = plan.kv_bytes_per_token[plan.kv_type] if plan is not None \
        else kv_bytes_per_token(header, settings.kv_type)
    buffers = llama_log.buffer_sizes(log_lines)
    info = _model_info(path, header, model, ctx, settings, plan, chat_format=fmt,
                       buffers=buffers, kv_bytes=bytes_per_cell * ctx.n_ctx(),
                       started=started, invariant=invariant)
    memory = [] if plan is None else [planned_snapshot(plan),
                                      measured_snapshot(plan, buffers, "loaded")]
    n_threads = ctx.params.n_threads
    prompt_threads = config.n_threads_batch or n_threads
    return LoadedModel(header, model, ctx, fmt, info, settings.n_batch, bytes_per_cell,
                       plan=plan, memory=memory,
                       invariant_rows=rows, turn_end_tokens=turn_end_tokens(model, fmt),
                       threads=(n_threads, prompt_threads,
                                config.n_threads_verify or prompt_threads))


def does_not_fit(name: str, plan: MemoryPlan) -> str:
    """Why a model is refused under a budget the user set, and what would fit."""
    would = [alt.change for alt in plan.alternatives if alt.fits]
    return (f"{name} does not fit the memory budget that was set: {plan.verdict}"
            + (f" (it would with {' or '.join(would[:3])})" if would else ""))


def _plan_if_known(config: ModelConfig, header: GGUFHeader) -> MemoryPlan | None:
    """The memory plan, or None for a model the planner does not know: llama.cpp then
    decides whether it can load it."""
    try:
        return plan_for(config, header)
    except UnplannableModel as exc:
        log.warning("%s; loading without a memory plan", exc.message)
        return None


def _model_info(path: Path, header: GGUFHeader, model: _internals.LlamaModel,
                ctx: _internals.LlamaContext, settings: _Settings, plan: MemoryPlan | None,
                *, chat_format: ChatFormat, buffers: dict[str, int], kv_bytes: int,
                started: float, invariant: bool) -> ModelLoaded:
    """The ``model_loaded`` event for a load that began at ``started``."""
    n_gpu_layers = min(settings.n_gpu_layers, header.n_layers + 1) if has_gpu() else 0
    return ModelLoaded(
        path=str(path),
        name=header.name,
        architecture=header.architecture,
        description=model.desc(),
        quant=quant_name(header),
        quant_cost=describe(lookup(model_identity(header), quant_name(header))),
        n_params=model.n_params(),
        file_bytes=header.file_bytes,
        weights_bytes=model.size(),
        n_vocab=model.n_vocab(),
        n_ctx=ctx.n_ctx(),
        n_ctx_train=model.n_ctx_train(),
        n_layers=header.n_layers,
        n_gpu_layers=n_gpu_layers,
        backend=compute_backend(n_gpu_layers),
        devices=[d.name for d in list_devices()],
        chat_format=chat_format.name,
        chat_format_note=chat_format.note,
        kv_bytes=kv_bytes,
        buffers=buffers,
        load_s=time.perf_counter() - started,
        gpu_layers=plan.gpu_layers if plan is not None and n_gpu_layers else [],
        output_on_gpu=n_gpu_layers > header.n_layers if plan is None
        else plan.output_on_gpu and n_gpu_layers > 0,
        kv_type=settings.kv_type,
        n_batch=settings.n_batch,
        n_ubatch=settings.n_ubatch,
        flash_attn=settings.flash_attn,
        batch_invariant=invariant,
    )


def planned_snapshot(plan: MemoryPlan) -> MemorySnapshot:
    total = sum(plan.buffers.values())
    return MemorySnapshot(
        stage="planned", pool=plan.pool, device=plan.device, budget_bytes=plan.budget_bytes,
        n_layers=plan.n_layers, n_gpu_layers=plan.n_gpu_layers, buffers=plan.buffers,
        total_bytes=total, planned_total_bytes=total, kv_bytes=plan.kv_bytes,
        fits=plan.fits, verdict=plan.verdict, warnings=plan.warnings)


def measured_snapshot(plan: MemoryPlan, buffers: dict[str, int], stage: MemoryStage,
                      kv_used_bytes: int = 0) -> MemorySnapshot:
    """What llama.cpp allocated (its logged buffer sizes), the process's resident
    memory and, on a GPU, the device memory in use."""
    gpu_used = None
    for dev in query_devices():
        if dev.name == plan.device and dev.kind == "gpu" and dev.total_bytes:
            gpu_used = dev.total_bytes - dev.free_bytes
    return MemorySnapshot(
        stage=stage, pool=plan.pool, device=plan.device, budget_bytes=plan.budget_bytes,
        n_layers=plan.n_layers, n_gpu_layers=plan.n_gpu_layers, buffers=buffers,
        total_bytes=sum(buffers.values()), planned_total_bytes=sum(plan.buffers.values()),
        kv_bytes=sum(v for k, v in buffers.items() if k.startswith("KV ")),
        kv_used_bytes=kv_used_bytes, rss_bytes=process_rss(), gpu_used_bytes=gpu_used,
        fits=plan.fits, verdict=plan.verdict, warnings=plan.warnings)


_GGML_KV_TYPES = {"f16": 1, "q8_0": 8, "q4_0": 2}


def _load(config: ModelConfig, plan: _Settings, path: Path, *, repack: bool = True,
          ) -> tuple[_internals.LlamaModel, _internals.LlamaContext]:
    model_params = llama_cpp.llama_model_default_params()
    model_params.n_gpu_layers = plan.n_gpu_layers
    model_params.use_mmap = config.use_mmap
    # Repacked CPU layouts (llama.cpp's "extra" buffer types) speed nothing up on the
    # bundled model here but give batches of 4+ rows a GEMM of their own.
    model_params.use_extra_bufts = repack
    try:
        # verbose=True only stops llama-cpp-python from redirecting fds 1 and 2;
        # the C library's log goes to our callback either way.
        model = _internals.LlamaModel(path_model=str(path), params=model_params, verbose=True)
    except ValueError:
        # The file passed kvchat's checks but not llama.cpp's: still a bad model file.
        detail = llama_log.recent_errors() or "llama.cpp could not load it"
        raise ModelFileError(f"cannot load {path}: {detail}") from None

    n_threads = config.n_threads or usable_cores()
    ctx_params = llama_cpp.llama_context_default_params()
    ctx_params.n_ctx = context_cells(config)
    ctx_params.n_batch = plan.n_batch
    ctx_params.n_ubatch = plan.n_ubatch
    ctx_params.n_outputs_max = plan.n_outputs_max
    # An in-graph sampler (engine/decode/sampling/in_graph.py) serves as many rows of one
    # sequence as a verification batch has: all of n_outputs_max, not llama.cpp's 1.
    ctx_params.n_outputs_max_per_seq = 0
    # shared: sequences share the n_ctx cells (unified KV), a reply may use as many as
    # admission gave it and sequences share a prompt's cells (seq_cp). split: a stream of
    # n_ctx / parallel cells each, whose attention reads no other sequence's cells.
    ctx_params.n_seq_max = config.parallel
    ctx_params.kv_unified = config.parallel > 1 and config.kv_layout == "shared"
    ctx_params.n_threads = n_threads
    # Between prompts the context keeps the verification count (LoadedModel.prompt_threads).
    ctx_params.n_threads_batch = config.n_threads_verify or config.n_threads_batch or n_threads
    ctx_params.type_k = _GGML_KV_TYPES[plan.kv_type]
    ctx_params.type_v = _GGML_KV_TYPES[plan.kv_type]
    ctx_params.no_perf = True
    if plan.flash_attn is not None:
        ctx_params.flash_attn_type = int(plan.flash_attn)  # 0 disabled, 1 enabled
    try:
        ctx = _internals.LlamaContext(model=model, params=ctx_params, verbose=True)
    except ValueError:
        model.close()
        detail = llama_log.recent_errors() or "out of memory?"
        raise ModelLoadError(f"cannot create a {config.n_ctx}-token context: {detail}") from None
    return model, ctx


def has_gpu() -> bool:
    """Whether this llama.cpp build has a GPU backend to offload to."""
    return bool(llama_cpp.llama_supports_gpu_offload())


def _chat_format(config: ModelConfig, header: GGUFHeader,
                 model: _internals.LlamaModel) -> ChatFormat:
    """The format for this model; its template is tried on a test conversation here,
    under the sandbox's limits (about a second at most for a template that loops)."""
    def piece(token: int) -> str:
        if token < 0:
            return ""
        return model.token_get_text(token)

    def is_single_token(text: str) -> bool:
        return len(model.tokenize(text.encode(), add_bos=False, special=True)) == 1

    return choose_format(config.chat_format, header.architecture, header.chat_template,
                         piece(model.token_bos()), piece(model.token_eos()), is_single_token,
                         tokenizer_adds_bos=model.add_bos_token() and model.token_bos() >= 0)


def turn_end_tokens(model: _internals.LlamaModel, fmt: ChatFormat) -> frozenset[int]:
    """The tokens that open what ``fmt`` writes after a reply, where that is a special
    token (control or user-defined: a turn marker, not text the reply may contain)."""
    found = set()
    for tail in fmt.turn_ends():
        tokens = model.tokenize(tail.lstrip().encode(), add_bos=False, special=True)
        if tokens and (model.token_get_attr(tokens[0])
                       & (TOKEN_ATTR_CONTROL | TOKEN_ATTR_USER_DEFINED)
                       or llama_cpp.llama_vocab_is_eog(model.vocab, tokens[0])):
            found.add(tokens[0])
    return frozenset(found)
