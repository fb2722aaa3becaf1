"""Events about the loaded model: what was loaded, and its memory, planned and measured."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from engine.events.base import _Event


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


class ChatFormatFallback(_Event):
    """The chat template failed this conversation: it was rendered in ``chat_format``."""

    type: Literal["chat_format"] = "chat_format"
    chat_format: str
    reason: str
    given_up: bool = False
    """It hit a limit (time, size, memory): not tried again while the model is loaded."""
    message: str
