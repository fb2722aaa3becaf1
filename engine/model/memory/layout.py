"""The arithmetic of a memory plan: for one choice of GPU layers, KV cache type,
context and micro-batch, every llama.cpp buffer's size and what each memory pool holds.
The planner (``planner.py``) makes its choices, and weighs the alternatives, with it.

Buffers are named as llama.cpp logs them (``model CUDA0``, ``KV CPU``, ``compute
CUDA_Host``...) so planned and measured line up key by key.

How llama.cpp places things (``llama_model::load_tensors``): with n_gpu_layers = g,
the last g of the n_layers + 1 "layers" go to the GPU, the output layer counting as
the last one; the token embeddings always stay on the CPU. So g = 1 offloads only the
output head, g = n_layers + 1 everything. Each layer's KV cache lives with the layer.

Compute buffers are estimated from the graph's widest point for one micro-batch
(n_ubatch tokens), flash attention on: the logits (n_vocab x min(n_ubatch,
n_outputs_max) floats), the FFN (n_ubatch x (2 n_embd + 3 n_ff) floats) or the
attention block, whichever is largest. Without flash attention the KQ matrix
(n_ctx x n_ubatch x n_head floats, twice) usually dominates. With a partial GPU split
llama.cpp runs the CPU layers' matrix products on the GPU during prompt processing
(op offload); measured on an H100 (70B Q4_K_M, 64 of 81 layers), the GPU compute
buffer then grows by about n_ubatch x (n_ff + 2 n_embd) floats over the full-offload
figure, which is what the plan adds. The CPU backend repacks Q4_0/Q4_K/IQ4_NL
weights into a separate buffer only when no GPU is in use.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.errors import ModelFileError
from engine.model.gguf_checks import MAX_LAYERS, layer_index
from engine.model.gguf_header import GGUFHeader
from engine.model.memory.budget import Budget
from engine.model.memory.kv_cost import (
    KV_TYPE_BYTES,
    kv_bytes_per_layer,
    repacked_bytes,
    weights_by_layer,
)

MiB = 1024 * 1024
KV_TYPES = tuple(KV_TYPE_BYTES)
# Memory a backend uses outside llama.cpp's buffers: CUDA's context, cuBLAS
# workspaces, Metal's command buffers; on the CPU, the Python process and libraries.
RUNTIME_RESERVE = {"gpu": 768 * MiB, "unified": 512 * MiB, "cpu": 256 * MiB}
F32 = 4


class UnplannableModel(ModelFileError):
    """The GGUF lacks the hyperparameters planning needs (an architecture the planner
    does not know); llama.cpp may still load it, without a plan."""


@dataclass(frozen=True)
class PlanRequest:
    """What the user asked for; None / "auto" / -1 leave the choice to the planner."""

    n_ctx: int | None = None
    kv_type: str = "auto"
    n_ubatch: int | None = None
    n_batch: int = 512
    n_gpu_layers: int = -1
    flash_attn: bool | None = None
    n_outputs_max: int = 128
    headroom: float = 0.05
    """Share of the budget left unplanned, for what no estimate sees."""
    cpu_repack: bool = True
    """The CPU backend repacks Q4_0/Q4_K/IQ4_NL weights (x86 AVX2, Arm)."""


@dataclass
class ModelFigures:
    """The header figures the plan needs, read once."""

    header: GGUFHeader
    n_layers: int
    n_embd: int
    n_ff: int
    n_head: int
    q_dim: int
    kv_dim: int
    n_vocab: int
    n_ctx_train: int
    layer_bytes: list[int]
    other_bytes: int
    output_bytes: int
    """Bytes of the output head's weights on the GPU (the tied embeddings' copy)."""
    input_bytes: int
    kv_layer: dict[str, list[int]] = field(default_factory=dict)


def model_figures(header: GGUFHeader) -> ModelFigures:
    """Raises UnplannableModel for a header without the figures planning needs."""
    arch = header.architecture
    n_layers = header.n_layers
    n_embd = header.arch_int("embedding_length")
    n_head = header.arch_int("attention.head_count")
    if n_layers <= 0 or n_embd <= 0 or n_head <= 0:
        raise UnplannableModel(f"cannot plan for architecture {arch!r}: its GGUF metadata has "
                             f"no {arch}.block_count / embedding_length / attention.head_count")
    if n_layers > MAX_LAYERS:  # a header made by hand: files are checked when read
        raise UnplannableModel(f"cannot plan {n_layers} layers (llama.cpp takes at most "
                               f"{MAX_LAYERS})")
    n_ff = header.arch_int("feed_forward_length") or 4 * n_embd
    head_dim = header.arch_int("attention.key_length") or n_embd // n_head
    n_kv_head = header.arch_int("attention.head_count_kv") or n_head
    tensors = {t.name: t for t in header.tensors}
    embd = tensors.get("token_embd.weight")
    n_vocab = embd.shape[1] if embd is not None and len(embd.shape) == 2 else \
        header.arch_int("vocab_size", 32000) or 32000
    per_layer, other = weights_by_layer(header)
    output = tensors.get("output.weight") or embd
    return ModelFigures(
        header=header, n_layers=n_layers, n_embd=n_embd, n_ff=n_ff, n_head=n_head,
        q_dim=n_head * head_dim, kv_dim=n_kv_head * head_dim, n_vocab=n_vocab,
        n_ctx_train=header.n_ctx_train, layer_bytes=per_layer, other_bytes=other,
        output_bytes=(output.n_bytes if output is not None else 0)
        + sum(t.n_bytes for n, t in tensors.items() if n == "output_norm.weight"),
        input_bytes=embd.n_bytes if embd is not None else 0,
        kv_layer={k: kv_bytes_per_layer(header, k) for k in KV_TYPES},
    )


def compute_bytes(m: ModelFigures, n_ctx: int, n_ubatch: int, n_outputs: int,
                  flash_attn: bool) -> int:
    """The widest point of one micro-batch's graph, in bytes (see the module doc)."""
    u = n_ubatch
    logits = m.n_vocab * min(u, n_outputs) * F32 + 2 * u * m.n_embd * F32
    ffn = u * (2 * m.n_embd + 3 * m.n_ff) * F32
    attn = u * (3 * m.n_embd + 3 * m.q_dim + 4 * m.kv_dim) * F32
    mask = n_ctx * u * (2 if flash_attn else F32)
    if not flash_attn:
        attn += 2 * n_ctx * u * m.n_head * F32
    return max(logits, ffn, attn + mask)


def _host_compute(m: ModelFigures, n_ctx: int, n_ubatch: int) -> int:
    # With a GPU split the CPU side keeps the graph inputs: embeddings, mask, positions.
    return n_ubatch * m.n_embd * F32 * 2 + n_ctx * n_ubatch * 2


@dataclass
class Layout:
    """One choice's buffers and what each pool holds (see ``MemoryPlan`` for the
    fields' meaning)."""

    g: int
    kv_type: str
    n_ubatch: int
    buffers: dict[str, int]
    pool_bytes: int
    host_bytes: int
    kv_bytes: int
    kv_gpu: int
    weights_gpu: int
    compute: int
    gpu_layers: list[int]
    output_on_gpu: bool


def layout(m: ModelFigures, budget: Budget, req: PlanRequest, n_ctx: int, kv_type: str,
           n_ubatch: int, g: int, flash_attn: bool) -> Layout:
    """The buffers with the last ``g`` layers on the budget's device (none on a CPU
    budget), a ``kv_type`` cache of ``n_ctx`` cells and ``n_ubatch``-token micro-batches."""
    n = m.n_layers
    pool = budget.kind
    if pool == "cpu":
        g = 0
    g = max(0, min(g, n + 1))
    first_gpu = n + 1 - g
    gpu_layers = [i for i in range(n) if i >= first_gpu]
    cpu_layers = {i for i in range(n) if i < first_gpu}
    output_on_gpu = g >= 1
    dev = budget.device if pool != "cpu" else "CPU"
    kv_layer = m.kv_layer[kv_type]
    kv_gpu = sum(kv_layer[i] for i in gpu_layers) * n_ctx
    kv_cpu = sum(kv_layer[i] for i in cpu_layers) * n_ctx
    w_gpu = sum(m.layer_bytes[i] for i in gpu_layers) + (m.output_bytes if output_on_gpu else 0)
    w_cpu = _mapped_span(m, cpu_layers, output_on_gpu)
    compute = compute_bytes(m, n_ctx, n_ubatch, req.n_outputs_max, flash_attn)
    out_buf = m.n_vocab * F32
    buffers: dict[str, int] = {}
    if g > 0:
        buffers[f"model {dev}"] = w_gpu
        if kv_gpu:
            buffers[f"KV {dev}"] = kv_gpu
        gpu_compute = compute
        if cpu_layers:  # a split graph keeps more alive across its GPU/CPU boundaries
            gpu_compute += n_ubatch * (m.n_ff + 2 * m.n_embd) * F32
        buffers[f"compute {dev}"] = gpu_compute
        host = "CPU" if pool == "unified" else f"{dev.rstrip('0123456789')}_Host"
        buffers[f"compute {host}"] = _host_compute(m, n_ctx, n_ubatch)
    else:
        buffers["compute CPU"] = compute
    buffers["model CPU_Mapped"] = w_cpu
    if req.cpu_repack and g == 0:  # with a GPU in use, CPU layers are not repacked
        repack = repacked_bytes(m.header, cpu_layers, not output_on_gpu)
        if repack:
            buffers["model CPU_REPACK"] = repack
    if kv_cpu:
        buffers["KV CPU"] = kv_cpu
    buffers["output CPU"] = out_buf
    reserve = RUNTIME_RESERVE[pool]
    # Resident memory, not address space: the mapped span has holes (GPU tensors) and
    # repacked tensors are read once from the mapping, then live in the repack buffer.
    cpu_weights = _cpu_tensor_bytes(m, cpu_layers, output_on_gpu)
    host_side = cpu_weights + kv_cpu + out_buf + sum(
        v for k, v in buffers.items() if k.startswith("compute") and not k.endswith(f" {dev}"))
    if pool == "gpu":
        pool_bytes = w_gpu + kv_gpu + buffers[f"compute {dev}"] + reserve if g > 0 else reserve
        host_bytes = host_side + (compute if g == 0 else 0)
    else:  # one pool; on unified memory the GPU maps the weights, no copy
        pool_bytes = m.header.weights_bytes + kv_gpu + kv_cpu + out_buf + reserve + sum(
            v for k, v in buffers.items() if k.startswith("compute"))
        host_bytes = 0
    return Layout(g, kv_type, n_ubatch, buffers, pool_bytes, host_bytes, kv_gpu + kv_cpu,
                   kv_gpu, w_gpu, compute, gpu_layers, output_on_gpu)


def _mapped_span(m: ModelFigures, cpu_layers: set[int], output_on_gpu: bool) -> int:
    """Bytes of the file llama.cpp maps for the CPU: from the first to the last byte of
    the tensors the CPU keeps (one span per file, holes included)."""
    first, last = None, 0
    for t in m.header.tensors:
        layer = layer_index(t.name)
        if layer is not None:
            on_cpu = layer in cpu_layers
        elif t.name in ("output.weight", "output_norm.weight"):
            on_cpu = not output_on_gpu
        else:  # token embeddings (always the CPU's), rope factors
            on_cpu = t.name == "token_embd.weight" or len(cpu_layers) > 0 or not output_on_gpu
        if on_cpu:
            first = t.offset if first is None else min(first, t.offset)
            last = max(last, t.offset + t.n_bytes)
    return 0 if first is None else last - first


def _cpu_tensor_bytes(m: ModelFigures, cpu_layers: set[int], output_on_gpu: bool) -> int:
    total = 0
    for t in m.header.tensors:
        layer = layer_index(t.name)
        if layer is not None:
            total += t.n_bytes if layer in cpu_layers else 0
        elif t.name in ("output.weight", "output_norm.weight"):
            total += 0 if output_on_gpu else t.n_bytes
        else:
            total += t.n_bytes
    return total
