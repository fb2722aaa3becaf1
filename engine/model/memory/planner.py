"""The memory plan: what goes where, before llama.cpp allocates anything.

From a GGUF header (a real file's or a built-in shape's) and a :class:`Budget`, pick
n_gpu_layers, KV cache type, n_ctx and n_ubatch, and say what each llama.cpp buffer
will be (the arithmetic is ``layout.py``'s), whether it fits, and when it does not,
what would: a smaller context, a quantized KV cache, a smaller quant.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from engine.model.gguf_header import GGUFHeader
from engine.model.memory.budget import Budget
from engine.model.memory.kv_cost import KV_TYPE_BYTES, pad_ctx
from engine.model.memory.layout import (
    KV_TYPES,
    RUNTIME_RESERVE,
    Layout,
    ModelFigures,
    PlanRequest,
    UnplannableModel,
    layout,
    model_figures,
)

__all__ = ["Alternative", "MemoryPlan", "PlanRequest", "UnplannableModel", "plan_memory"]

GiB = 1024 * 1024 * 1024
UBATCH_CHOICES = (512, 256, 128)


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
    quant: str = ""
    """For a smaller quant of the same model: its type (``Q2_K``), by which ``kvchat
    plan`` finds what it was measured to cost."""


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


def _limit(budget: Budget, req: PlanRequest) -> int:
    return int(budget.total_bytes * (1 - req.headroom))


def _choose(m: ModelFigures, budget: Budget, req: PlanRequest, n_ctx: int,
            flash_attn: bool) -> Layout:
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
            lay = layout(m, budget, req, n_ctx, kv, ub, g_full, flash_attn)
            if lay.pool_bytes <= limit:
                return lay
    kv = "f16" if req.kv_type == "auto" else req.kv_type
    if forced or budget.kind != "gpu":
        return layout(m, budget, req, n_ctx, kv, ub_opts[-1] if budget.kind != "gpu"
                      else ub_opts[0], g_full, flash_attn)
    # 2. A discrete GPU: as many layers as fit, the rest in system RAM.
    best = layout(m, budget, req, n_ctx, kv, ub_opts[0], 0, flash_attn)
    for ub in ub_opts:
        lo, hi = 0, full
        while lo < hi:  # the largest g that fits
            mid = (lo + hi + 1) // 2
            if layout(m, budget, req, n_ctx, kv, ub, mid, flash_attn).pool_bytes <= limit:
                lo = mid
            else:
                hi = mid - 1
        lay = layout(m, budget, req, n_ctx, kv, ub, lo, flash_attn)
        if lay.g > best.g:
            best = lay
    return best


def plan_memory(header: GGUFHeader, budget: Budget, req: PlanRequest | None = None,
                source: str | None = None) -> MemoryPlan:
    """The plan for ``header`` within ``budget``. Raises ModelFileError when the
    header lacks what planning needs."""
    req = req or PlanRequest()
    m = model_figures(header)
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


def _size(n: int) -> str:
    """GiB, or MiB under one: a small model's rows must still tell two sizes apart."""
    return _gib(n) if n >= GiB else f"{n / 2**20:.1f} MiB"


def _verdict(m: ModelFigures, budget: Budget, lay: Layout, fits: bool, limit: int) -> str:
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


def _alternatives(m: ModelFigures, budget: Budget, req: PlanRequest, lay: Layout,
                  n_ctx: int, flash_attn: bool) -> list[Alternative]:
    """What would make the model fit (or what stops it), each with its numbers."""
    out = _smaller_context(m, budget, req, lay, n_ctx, flash_attn)
    out += _quantized_kv(m, budget, req, lay, n_ctx)
    out += _fewer_layers(m, budget, lay)
    out += _smaller_quant(m, budget, req, lay, n_ctx, flash_attn)
    return out


def _fits_fully(x: Layout, m: ModelFigures, budget: Budget, req: PlanRequest) -> bool:
    return x.pool_bytes <= _limit(budget, req) and (x.g == m.n_layers + 1
                                                    or budget.kind == "cpu")


def _smaller_context(m: ModelFigures, budget: Budget, req: PlanRequest, lay: Layout,
                     n_ctx: int, flash_attn: bool) -> list[Alternative]:
    """The largest context that fits with everything else as planned."""
    full = m.n_layers + 1
    lo, hi = 0, n_ctx // 256
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _fits_fully(layout(m, budget, req, mid * 256, lay.kv_type, lay.n_ubatch, full,
                              flash_attn), m, budget, req):
            lo = mid
        else:
            hi = mid - 1
    if 0 < lo < n_ctx // 256:
        x = layout(m, budget, req, lo * 256, lay.kv_type, lay.n_ubatch, full, flash_attn)
        return [Alternative(change=f"--ctx {lo * 256}", fits=True, total_bytes=x.pool_bytes,
                            detail=f"KV cache {_size(x.kv_bytes)} instead of "
                                   f"{_size(lay.kv_bytes)}")]
    if lo == 0:
        x = layout(m, budget, req, 256, lay.kv_type, lay.n_ubatch, full, flash_attn)
        return [Alternative(change="--ctx 256", fits=False, total_bytes=x.pool_bytes,
                            detail="even the smallest context does not fit: the weights "
                                   "alone are too large")]
    return []


def _quantized_kv(m: ModelFigures, budget: Budget, req: PlanRequest, lay: Layout,
                  n_ctx: int) -> list[Alternative]:
    """Each KV cache type smaller than the plan's (flash attention on, as they need)."""
    out = []
    for kv in ("q8_0", "q4_0"):
        if KV_TYPE_BYTES[kv] >= KV_TYPE_BYTES[lay.kv_type]:
            continue
        x = layout(m, budget, req, n_ctx, kv, lay.n_ubatch, m.n_layers + 1, True)
        out.append(Alternative(change=f"--kv-type {kv}", fits=_fits_fully(x, m, budget, req),
                               total_bytes=x.pool_bytes,
                               detail=f"KV cache {_size(x.kv_bytes)} instead of "
                                      f"{_size(lay.kv_bytes)}"))
    return out


def _fewer_layers(m: ModelFigures, budget: Budget, lay: Layout) -> list[Alternative]:
    """Fewer GPU layers: only a discrete GPU has RAM beside it to take the rest."""
    full = m.n_layers + 1
    if budget.kind == "unified":
        return [Alternative(change="fewer GPU layers", fits=False,
                            total_bytes=lay.pool_bytes,
                            detail="no help on unified memory: CPU layers use the same "
                                   "pool (mmap can page weights from disk, far slower)")]
    if budget.kind == "gpu" and lay.g < full:
        return [Alternative(change=f"n_gpu_layers {lay.g}", fits=False,
                            total_bytes=lay.pool_bytes,
                            detail=f"what this plan does: {full - lay.g} layers stay in "
                                   f"system RAM ({_gib(lay.host_bytes)})")]
    return []


def _smaller_quant(m: ModelFigures, budget: Budget, req: PlanRequest, lay: Layout,
                   n_ctx: int, flash_attn: bool) -> list[Alternative]:
    """Smaller quants of the same architecture (a built-in shape), up to the first
    that fits."""
    # Imported here: only a plan that does not fit needs the built-in shapes (and the
    # gguf package they import).
    from engine.model.memory.shapes import QUANTS, shape_for_header, shape_header

    shape = shape_for_header(m.header)
    if shape is None:
        return []
    out = []
    for mix in QUANTS.values():
        h = shape_header(shape, mix)
        if h.weights_bytes >= m.header.weights_bytes:
            continue
        x = layout(model_figures(h), budget, req, n_ctx, lay.kv_type, lay.n_ubatch,
                   m.n_layers + 1, flash_attn)
        fits = _fits_fully(x, m, budget, req)
        out.append(Alternative(change=f"a {mix.name} file", fits=fits,
                               total_bytes=x.pool_bytes,
                               detail=f"weights {_size(h.weights_bytes)} instead of "
                                      f"{_size(m.header.weights_bytes)}", quant=mix.name))
        if fits:
            break
    return out
