"""``kvchat plan``: will this model fit, and how would it be split? Reads the GGUF
header only (or a built-in shape); never loads weights."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tui.cli import EXIT_OK
from tui.safe_text import json_dumps, visible

if TYPE_CHECKING:  # the engine is imported when the command runs, not for --help
    from engine.model.gguf_header import GGUFHeader
    from engine.model.memory.planner import MemoryPlan
    from engine.model.quant_costs import QuantCost

GiB = 1024**3
MiB = 1024**2


def add_plan_parser(commands: argparse._SubParsersAction, positive: object) -> None:
    plan = commands.add_parser(
        "plan", help="plan how a model fits in memory (reads the header only)",
        description="Plan how a GGUF model fits in memory: weights per layer, KV cache per "
                    "token and for the context, compute buffers, the GPU/CPU split, and "
                    "what would fit when it does not. Loads no weights.")
    plan.add_argument("model", nargs="?", metavar="MODEL.gguf",
                      help="GGUF file, or a name `kvchat models` lists "
                           "(default: the configured model)")
    plan.add_argument("--shape", metavar="NAME:QUANT",
                      help="a built-in shape instead of a file, e.g. llama-3.1-70b:Q4_K_M")
    plan.add_argument("--budget", metavar="SIZE",
                      help="memory to plan for, e.g. 36GiB (default: the GPU's free memory, "
                           "else available system memory)")
    plan.add_argument("--memory", choices=["gpu", "unified", "cpu"],
                      help="kind of memory the budget is: a discrete GPU's, unified "
                           "(Apple Silicon), or system RAM (default: this machine's)")
    plan.add_argument("--ctx", type=positive, metavar="N", help="context size in tokens")
    plan.add_argument("--parallel", type=positive, metavar="N",
                      help="replies decoded together, sharing the context's cells")
    plan.add_argument("--kv-layout", choices=["shared", "split"],
                      help="with --parallel: one pool of cells (shared) or ctx / N each")
    plan.add_argument("--kv-type", choices=["auto", "f16", "q8_0", "q4_0"],
                      help="KV cache type (default auto: f16 unless quantizing makes it fit)")
    plan.add_argument("--ubatch", type=positive, metavar="N",
                      help="micro-batch size (default: 512, smaller if that makes it fit)")
    plan.add_argument("--gpu-layers", type=int, metavar="N",
                      help="force n_gpu_layers instead of choosing (the output layer counts)")
    plan.add_argument("--config", metavar="PATH", help="config file for the defaults")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")


def run_plan(args: argparse.Namespace) -> int:
    from engine.errors import ConfigError
    from engine.model.loader import context_cells
    from engine.model.memory.budget import detect_budget
    from engine.model.memory.planner import PlanRequest, plan_memory
    from tui.config import load_app_config

    app_config = load_app_config(Path(args.config) if args.config else None)
    config = app_config.model
    if args.shape and args.model:
        raise ConfigError("give a MODEL.gguf or --shape, not both")
    header, source = _header(args, config.path, app_config.models.dirs)
    if args.gpu_layers is not None and args.gpu_layers < 0:
        raise ConfigError("--gpu-layers must be 0 or more")
    budget = detect_budget(args.budget or config.memory_budget, args.memory)
    parallel = args.parallel or config.parallel
    layout = args.kv_layout or config.kv_layout
    cells = context_cells(config.model_copy(update={
        "n_ctx": args.ctx or config.n_ctx, "parallel": parallel, "kv_layout": layout}))
    request = PlanRequest(
        n_ctx=cells, kv_type=args.kv_type or config.kv_type,
        n_ubatch=args.ubatch or config.n_ubatch, n_batch=config.n_batch,
        n_gpu_layers=args.gpu_layers if args.gpu_layers is not None else config.n_gpu_layers,
        flash_attn=config.flash_attn, n_outputs_max=config.n_outputs_max,
        headroom=config.headroom)
    plan = plan_memory(header, budget, request, source=source)
    costs = _quant_costs(header, plan)
    split = parallel > 1 and layout == "split"
    if args.json:
        data = {**plan.model_dump(mode="json"), "parallel": parallel, "kv_layout": layout}
        for alt in data["alternatives"]:
            if alt["quant"]:
                cost = costs.get(alt["quant"])
                alt["quality"] = cost.model_dump() if cost else None
        print(json_dumps(data))
    else:
        sys.stdout.write(visible(render(plan, costs, parallel, split)))  # names from the file
    return EXIT_OK


def _quant_costs(header: GGUFHeader, plan: MemoryPlan) -> dict[str, QuantCost | None]:
    """What ``kvchat quality`` measured for the plan's smaller quants of this model."""
    from engine.model.quant_costs import lookup, model_identity

    identity = model_identity(header)
    return {alt.quant: lookup(identity, alt.quant) for alt in plan.alternatives if alt.quant}


def _header(args: argparse.Namespace, configured: Path | None,
            dirs: list[str]) -> tuple[GGUFHeader, str]:
    from engine.model.gguf_header import read_gguf_header
    from engine.model.memory.shapes import parse_shape, shape_header
    from tui.cli.models import model_path

    if args.shape:
        shape, mix = parse_shape(args.shape)
        return shape_header(shape, mix), f"shape {shape.name}:{mix.name}"
    if args.model:
        path = Path(model_path(args.model, dirs))
    elif configured:
        path = Path(configured)
    else:
        from engine.model.bundled import default_model_path

        path = default_model_path()
    header = read_gguf_header(path)
    return header, str(path)


def _size(n: int) -> str:
    sign = "-" if n < 0 else ""
    n = abs(n)
    return f"{sign}{n / GiB:.2f} GiB" if n >= GiB else f"{sign}{n / MiB:.1f} MiB"


def render(p: MemoryPlan, costs: dict[str, QuantCost | None] | None = None,
           parallel: int = 1, split: bool = False) -> str:
    """The plan as a readable table; a smaller quant's row says what it was measured to
    cost in ``costs`` (from ``kvchat quality``), or that it was not. With ``parallel``
    replies, how they share the context's cells."""
    per = p.weights_per_layer
    kv = " · ".join(f"{k} {v / 1024:.1f} KiB" for k, v in p.kv_bytes_per_token.items())
    gpu = (f"layers {p.gpu_layers[0]}-{p.gpu_layers[-1]}" if p.gpu_layers else "no layers") \
        + (" + output" if p.output_on_gpu else "")
    rows = [
        ("model", f"{p.model} ({p.architecture}, {p.n_layers} layers) — {p.source}"),
        ("budget", f"{_size(p.budget_bytes)} {p.pool} on {p.device} ({p.budget_source})"),
        ("weights", f"{_size(p.weights_bytes)}: {p.n_layers} layers of "
                    f"{_size(min(per))}–{_size(max(per))}, embeddings/output "
                    f"{_size(p.weights_other_bytes)}"),
        ("KV / token", kv),
        ("context", f"{p.n_ctx} tokens (trained on {p.n_ctx_train}): KV cache "
                    f"{_size(p.kv_bytes)} as {p.kv_type}"),
        ("batching", f"n_batch {p.n_batch}, n_ubatch {p.n_ubatch}, logits for up to "
                     f"{p.n_outputs_max} tokens: compute {_size(p.compute_bytes)}, flash "
                     f"attention {'on' if p.flash_attn else 'off'}"),
        ("split", f"n_gpu_layers {p.n_gpu_layers} of {p.n_layers + 1}: {gpu} on the GPU"
         if p.pool != "cpu" else "everything on the CPU"),
    ]
    if parallel > 1 and split:
        rows.insert(5, ("replies", f"{parallel} at once, {p.n_ctx // parallel} cells each "
                                   "(split: a reply's context is its own share)"))
    elif parallel > 1:  # one unified KV cache: the cells are shared, not split
        rows.insert(5, ("replies", f"{parallel} at once share the {p.n_ctx} cells (about "
                                   f"{p.n_ctx // parallel} each when all are long); a reply "
                                   "waits until its prompt and max_tokens fit the free cells"))
    width = max(len(k) for k, _ in rows)
    out = [f"{k:<{width}}  {v}" for k, v in rows]
    out.append("")
    out.append(f"{'buffer (as llama.cpp names it)':<34}{'planned':>12}")
    for key, value in p.buffers.items():
        out.append(f"  {key:<32}{_size(value):>12}")
    out.append(f"  {'runtime reserve':<32}{_size(p.reserve_bytes):>12}")
    out.append(f"  {'needed from the budget':<32}{_size(p.pool_bytes):>12}")
    if p.host_bytes:
        out.append(f"  {'needed in system RAM':<32}{_size(p.host_bytes):>12}")
    out.append(f"  {'headroom':<32}{_size(p.headroom_bytes):>12}")
    out.append("")
    partial = p.pool == "gpu" and p.n_gpu_layers < p.n_layers + 1
    status = "DOES NOT FIT" if not p.fits else "PARTIAL" if partial else "FITS"
    out.append(f"{status}: {p.verdict}")
    for warning in p.warnings:
        out.append(f"warning: {warning}")
    if p.alternatives:
        out.append("")
        out.append("what would change it:")
        for alt in p.alternatives:
            mark = "fits" if alt.fits else "no"
            out.append(f"  {alt.change:<22}{_size(alt.total_bytes):>12}  {mark:<5} {alt.detail}")
            if alt.quant:
                out.append(f"  {'':<42}quality: {_cost_line((costs or {}).get(alt.quant))}")
    return "\n".join(out) + "\n"


def _cost_line(cost: QuantCost | None) -> str:
    if cost is None:
        return "not measured (kvchat quantize, then kvchat quality)"
    from engine.model.quant_costs import describe

    ppl = f", perplexity {cost.ppl / cost.ppl_reference - 1:+.1%}" if cost.ppl_reference else ""
    return describe(cost) + ppl
