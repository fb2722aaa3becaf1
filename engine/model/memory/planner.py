"""The memory plan: what goes where, before llama.cpp allocates anything.

From a GGUF header (a real file's or a built-in shape's) and a :class:`Budget`, pick
n_gpu_layers, KV cache type, n_ctx and n_ubatch, and say what each llama.cpp buffer
will be, named as llama.cpp logs them (``model CUDA0``, ``KV CPU``, ``compute
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

from pydantic import BaseModel, ConfigDict

from engine.errors import ModelFileError
from engine.model.gguf_header import GGUFHeader
from engine.model.memory.budget import Budget
from engine.model.memory.kv_cost import (
    KV_TYPE_BYTES,
    kv_bytes_per_layer,
    pad_ctx,
    repacked_bytes,
    weights_by_layer,
)

MiB = 1024 * 1024
GiB = 1024 * MiB
KV_TYPES = tuple(KV_TYPE_BYTES)
UBATCH_CHOICES = (512, 256, 128)
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


class Alternative(BaseModel):
    """One change that would make (more of) the model fit, with its numbers."""

    model_config = ConfigDict(frozen=True)

    change: str
    """What to change, e.g. ``--ctx 4096`` or ``--kv-type q8_0``."""
    fits: bool
    """True when the whole model then fits in the budget (all layers on the GPU)."""
    total_bytes: int
    """Memory the plan would then need from the budget's pool."""
    detail: str


class MemoryPlan(BaseModel):
    """Where every byte goes, planned before loading."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    model: str
    architecture: str
    source: str
    """The GGUF file, or ``shape NAME:QUANT``."""
    pool: str
    """gpu (discrete), unified (Apple Silicon / integrated) or cpu."""
    device: str
    budget_bytes: int
    budget_source: str
    system_bytes: int
    """Available system memory (holds the CPU layers of a GPU plan)."""
    n_layers: int
    n_gpu_layers: int
    """llama.cpp's n_gpu_layers: the last layers, the output layer counting as one."""
    gpu_layers: list[int]
    """Repeating layers on the GPU (the output layer is ``output_on_gpu``)."""
    output_on_gpu: bool
    n_ctx: int
    """Context cells, padded to llama.cpp's multiple of 256."""
    n_ctx_train: int
    kv_type: str
    n_batch: int
    n_ubatch: int
    n_outputs_max: int
    flash_attn: bool
    weights_bytes: int
    weights_per_layer: list[int]
    weights_other_bytes: int
    """Token embeddings, output head, final norm."""
    weights_gpu_bytes: int
    weights_cpu_bytes: int
    kv_bytes_per_token: dict[str, int]
    """Per cache type, all layers, K and V."""
    kv_bytes: int
    kv_gpu_bytes: int
    compute_bytes: int
    buffers: dict[str, int]
    """Planned llama.cpp buffers, keyed as llama.cpp logs them."""
    reserve_bytes: int
    """Runtime memory outside llama.cpp's buffers."""
    pool_bytes: int
    """What this plan takes from the budget's pool (buffers there + reserve)."""
    host_bytes: int
    """What a GPU plan needs in system RAM (CPU layers, token embeddings)."""
    headroom_bytes: int
    """Budget left after pool_bytes (negative: over budget)."""
    fits: bool
    """Everything on the budget's pool with the headroom kept."""
    verdict: str
    warnings: list[str]
    alternatives: list[Alternative]


@dataclass
class _Model:
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


def _model(header: GGUFHeader) -> _Model:
    arch = header.architecture
    n_layers = header.n_layers
    n_embd = int(header.arch_value("embedding_length", 0) or 0)
    n_head = int(header.arch_value("attention.head_count", 0) or 0)
    if n_layers <= 0 or n_embd <= 0 or n_head <= 0:
        raise UnplannableModel(f"cannot plan for architecture {arch!r}: its GGUF metadata has "
                             f"no {arch}.block_count / embedding_length / attention.head_count")
    n_ff_raw = header.arch_value("feed_forward_length", 4 * n_embd)
    n_ff = max(n_ff_raw) if isinstance(n_ff_raw, list) else int(n_ff_raw or 4 * n_embd)
    head_dim = int(header.arch_value("attention.key_length", n_embd // n_head) or 0)
    kv_heads = header.arch_value("attention.head_count_kv", n_head)
    n_kv_head = max(kv_heads) if isinstance(kv_heads, list) else int(kv_heads or n_head)
    tensors = {t.name: t for t in header.tensors}
    embd = tensors.get("token_embd.weight")
    n_vocab = embd.shape[1] if embd is not None and len(embd.shape) == 2 else \
        int(header.arch_value("vocab_size", 32000) or 32000)
    per_layer, other = weights_by_layer(header)
    output = tensors.get("output.weight") or embd
    return _Model(
        header=header, n_layers=n_layers, n_embd=n_embd, n_ff=n_ff, n_head=n_head,
        q_dim=n_head * head_dim, kv_dim=n_kv_head * head_dim, n_vocab=n_vocab,
        n_ctx_train=header.n_ctx_train, layer_bytes=per_layer, other_bytes=other,
        output_bytes=(output.n_bytes if output is not None else 0)
        + sum(t.n_bytes for n, t in tensors.items() if n == "output_norm.weight"),
        input_bytes=embd.n_bytes if embd is not None else 0,
        kv_layer={k: kv_bytes_per_layer(header, k) for k in KV_TYPES},
    )


def compute_bytes(m: _Model, n_ctx: int, n_ubatch: int, n_outputs: int,
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


def _host_compute(m: _Model, n_ctx: int, n_ubatch: int) -> int:
    # With a GPU split the CPU side keeps the graph inputs: embeddings, mask, positions.
    return n_ubatch * m.n_embd * F32 * 2 + n_ctx * n_ubatch * 2


@dataclass
class _Layout:
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


def _layout(m: _Model, budget: Budget, req: PlanRequest, n_ctx: int, kv_type: str,
            n_ubatch: int, g: int, flash_attn: bool) -> _Layout:
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
    return _Layout(g, kv_type, n_ubatch, buffers, pool_bytes, host_bytes, kv_gpu + kv_cpu,
                   kv_gpu, w_gpu, compute, gpu_layers, output_on_gpu)


def _mapped_span(m: _Model, cpu_layers: set[int], output_on_gpu: bool) -> int:
    """Bytes of the file llama.cpp maps for the CPU: from the first to the last byte of
    the tensors the CPU keeps (one span per file, holes included)."""
    first, last = None, 0
    for t in m.header.tensors:
        layer = _layer_index(t.name)
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


def _cpu_tensor_bytes(m: _Model, cpu_layers: set[int], output_on_gpu: bool) -> int:
    total = 0
    for t in m.header.tensors:
        layer = _layer_index(t.name)
        if layer is not None:
            total += t.n_bytes if layer in cpu_layers else 0
        elif t.name in ("output.weight", "output_norm.weight"):
            total += 0 if output_on_gpu else t.n_bytes
        else:
            total += t.n_bytes
    return total


def _layer_index(name: str) -> int | None:
    parts = name.split(".")
    return int(parts[1]) if parts[0] == "blk" and len(parts) > 1 and parts[1].isdigit() \
        else None


def _limit(budget: Budget, req: PlanRequest) -> int:
    return int(budget.total_bytes * (1 - req.headroom))


def _choose(m: _Model, budget: Budget, req: PlanRequest, n_ctx: int,
            flash_attn: bool) -> _Layout:
    limit = _limit(budget, req)
    full = m.n_layers + 1
    kv_opts = KV_TYPES if req.kv_type == "auto" else (req.kv_type,)
    ub_opts = (req.n_ubatch,) if req.n_ubatch else UBATCH_CHOICES
    forced = req.n_gpu_layers >= 0
    g_full = req.n_gpu_layers if forced else full
    # 1. Everything on the pool: f16 KV and a full micro-batch first; a quantized KV
    #    cache or a smaller micro-batch only when that is what makes it fit.
    for kv in kv_opts:
        if kv != "f16" and not flash_attn:
            continue  # llama.cpp needs flash attention for a quantized V cache
        for ub in ub_opts:
            lay = _layout(m, budget, req, n_ctx, kv, ub, g_full, flash_attn)
            if lay.pool_bytes <= limit:
                return lay
    kv = "f16" if req.kv_type == "auto" else req.kv_type
    if forced or budget.kind != "gpu":
        return _layout(m, budget, req, n_ctx, kv, ub_opts[-1] if budget.kind != "gpu"
                       else ub_opts[0], g_full, flash_attn)
    # 2. A discrete GPU: as many layers as fit, the rest in system RAM.
    best = _layout(m, budget, req, n_ctx, kv, ub_opts[0], 0, flash_attn)
    for ub in ub_opts:
        lo, hi = 0, full
        while lo < hi:  # the largest g that fits
            mid = (lo + hi + 1) // 2
            if _layout(m, budget, req, n_ctx, kv, ub, mid, flash_attn).pool_bytes <= limit:
                lo = mid
            else:
                hi = mid - 1
        lay = _layout(m, budget, req, n_ctx, kv, ub, lo, flash_attn)
        if lay.g > best.g:
            best = lay
    return best


def plan_memory(header: GGUFHeader, budget: Budget, req: PlanRequest | None = None,
                source: str | None = None) -> MemoryPlan:
    """The plan for ``header`` within ``budget``. Raises ModelFileError when the
    header lacks what planning needs."""
    req = req or PlanRequest()
    m = _model(header)
    warnings: list[str] = []
    n_ctx_train = m.n_ctx_train
    asked = req.n_ctx or (min(4096, n_ctx_train) if n_ctx_train else 4096)
    n_ctx = pad_ctx(asked)
    if n_ctx_train and asked > n_ctx_train:
        warnings.append(f"context {asked} is larger than the {n_ctx_train} tokens the model "
                        "was trained on: quality past that is not to be trusted")
    flash_attn = req.flash_attn if req.flash_attn is not None else True
    if req.kv_type in ("q8_0", "q4_0") and req.flash_attn is False:
        warnings.append(f"a {req.kv_type} V cache needs flash attention; it was switched on")
        flash_attn = True
    lay = _choose(m, budget, req, n_ctx, flash_attn)
    limit = _limit(budget, req)
    full = lay.g == m.n_layers + 1 or budget.kind == "cpu"
    fits = lay.pool_bytes <= limit and (full or budget.kind == "gpu")
    if budget.kind == "gpu" and lay.host_bytes > budget.system_bytes > 0:
        fits = False
        warnings.append(f"the CPU side needs {_gib(lay.host_bytes)} of system memory, "
                        f"{_gib(budget.system_bytes)} is available")
    verdict = _verdict(m, budget, lay, fits, limit)
    alts = [] if fits and full else _alternatives(m, budget, req, lay, n_ctx, flash_attn)
    return MemoryPlan(
        model=header.name, architecture=header.architecture,
        source=source or str(header.path), pool=budget.kind, device=budget.device,
        budget_bytes=budget.total_bytes, budget_source=budget.source,
        system_bytes=budget.system_bytes, n_layers=m.n_layers, n_gpu_layers=lay.g,
        gpu_layers=lay.gpu_layers, output_on_gpu=lay.output_on_gpu, n_ctx=n_ctx,
        n_ctx_train=n_ctx_train, kv_type=lay.kv_type,
        n_batch=max(req.n_batch, lay.n_ubatch), n_ubatch=lay.n_ubatch,
        n_outputs_max=req.n_outputs_max, flash_attn=flash_attn,
        weights_bytes=header.weights_bytes, weights_per_layer=m.layer_bytes,
        weights_other_bytes=m.other_bytes, weights_gpu_bytes=lay.weights_gpu,
        weights_cpu_bytes=lay.buffers.get("model CPU_Mapped", 0),
        kv_bytes_per_token={k: sum(v) for k, v in m.kv_layer.items()},
        kv_bytes=lay.kv_bytes, kv_gpu_bytes=lay.kv_gpu, compute_bytes=lay.compute,
        buffers=lay.buffers, reserve_bytes=RUNTIME_RESERVE[budget.kind],
        pool_bytes=lay.pool_bytes, host_bytes=lay.host_bytes,
        headroom_bytes=budget.total_bytes - lay.pool_bytes, fits=fits, verdict=verdict,
        warnings=warnings, alternatives=alts,
    )


def _gib(n: int) -> str:
    return f"{n / GiB:.2f} GiB"


def _verdict(m: _Model, budget: Budget, lay: _Layout, fits: bool, limit: int) -> str:
    need, have = _gib(lay.pool_bytes), _gib(budget.total_bytes)
    margin = f"{round((1 - limit / budget.total_bytes) * 100)}% headroom kept"
    if budget.kind == "cpu":
        if fits:
            return f"fits in system memory: {need} of {have} ({margin})"
        return f"needs {need} of system memory, the budget is {have}"
    if lay.g == m.n_layers + 1 and fits:
        return f"fits entirely on {budget.device}: {need} of {have} ({margin})"
    if budget.kind == "gpu" and lay.g > 0:
        return (f"partial offload: {lay.g} of {m.n_layers + 1} layers on {budget.device} "
                f"({need} of {have}); {len(m.layer_bytes) - len(lay.gpu_layers)} layers and "
                f"the token embeddings ({_gib(lay.host_bytes)}) run from system RAM, "
                "at CPU speed")
    if budget.kind == "gpu":
        return f"no layer fits on {budget.device} ({have}); everything runs on the CPU"
    return (f"weights, KV cache and compute need {_gib(lay.pool_bytes)} of one {have} "
            "pool")


def _alternatives(m: _Model, budget: Budget, req: PlanRequest, lay: _Layout, n_ctx: int,
                  flash_attn: bool) -> list[Alternative]:
    from engine.model.memory.shapes import QUANTS, shape_for_header

    limit = _limit(budget, req)
    full = m.n_layers + 1
    out: list[Alternative] = []

    def fits_fully(x: _Layout) -> bool:
        return x.pool_bytes <= limit and (x.g == full or budget.kind == "cpu")

    # A smaller context with everything else as planned.
    lo, hi = 0, n_ctx // 256
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits_fully(_layout(m, budget, req, mid * 256, lay.kv_type, lay.n_ubatch, full,
                              flash_attn)):
            lo = mid
        else:
            hi = mid - 1
    if 0 < lo < n_ctx // 256:
        x = _layout(m, budget, req, lo * 256, lay.kv_type, lay.n_ubatch, full, flash_attn)
        out.append(Alternative(change=f"--ctx {lo * 256}", fits=True, total_bytes=x.pool_bytes,
                               detail=f"KV cache {_gib(x.kv_bytes)} instead of "
                                      f"{_gib(lay.kv_bytes)}"))
    elif lo == 0:
        x = _layout(m, budget, req, 256, lay.kv_type, lay.n_ubatch, full, flash_attn)
        out.append(Alternative(change="--ctx 256", fits=False, total_bytes=x.pool_bytes,
                               detail="even the smallest context does not fit: the weights "
                                      "alone are too large"))
    # A quantized KV cache.
    for kv in ("q8_0", "q4_0"):
        if KV_TYPE_BYTES[kv] >= KV_TYPE_BYTES[lay.kv_type]:
            continue
        x = _layout(m, budget, req, n_ctx, kv, lay.n_ubatch, full, True)
        out.append(Alternative(change=f"--kv-type {kv}", fits=fits_fully(x),
                               total_bytes=x.pool_bytes,
                               detail=f"KV cache {_gib(x.kv_bytes)} instead of "
                                      f"{_gib(lay.kv_bytes)}"))
    # Fewer GPU layers (only a discrete GPU has RAM beside it to take the rest).
    if budget.kind == "unified":
        out.append(Alternative(change="fewer GPU layers", fits=False,
                               total_bytes=lay.pool_bytes,
                               detail="no help on unified memory: CPU layers use the same "
                                      "pool (mmap can page weights from disk, far slower)"))
    elif budget.kind == "gpu" and lay.g < full:
        out.append(Alternative(change=f"n_gpu_layers {lay.g}", fits=False,
                               total_bytes=lay.pool_bytes,
                               detail=f"what this plan does: {full - lay.g} layers stay in "
                                      f"system RAM ({_gib(lay.host_bytes)})"))
    # A smaller quant of the same architecture.
    shape = shape_for_header(m.header)
    if shape is not None:
        from engine.model.memory.shapes import shape_header

        for mix in QUANTS.values():
            h = shape_header(shape, mix)
            if h.weights_bytes >= m.header.weights_bytes:
                continue
            x = _layout(_model(h), budget, req, n_ctx, lay.kv_type, lay.n_ubatch, full,
                        flash_attn)
            out.append(Alternative(change=f"a {mix.name} file", fits=fits_fully(x),
                                   total_bytes=x.pool_bytes,
                                   detail=f"weights {_gib(h.weights_bytes)} instead of "
                                          f"{_gib(m.header.weights_bytes)}"))
            if fits_fully(x):
                break
    return out
