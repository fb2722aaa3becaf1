"""Another model while the engine runs: the models found here, each with its memory
plan's verdict for the engine's settings, and the check a switch passes before the
loaded model is freed. Headers only: nothing here loads weights, and nothing touches
the llama.cpp context, so it may run on any thread."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from engine.api import ModelChoice
from engine.config import ModelConfig
from engine.errors import ModelDoesNotFit, ModelFileError
from engine.model.catalog import Found, find_models, parameter_count, quant_name
from engine.model.gguf_header import GGUFHeader, read_gguf_header
from engine.model.loader import LoadedModel, plan_for
from engine.model.memory.budget import detect_budget
from engine.model.memory.planner import MemoryPlan, UnplannableModel


def planning_config(config: ModelConfig, current: LoadedModel | None) -> ModelConfig:
    """``config`` as a model that replaces ``current`` is planned with. On a CPU pool
    the detected budget is the memory available now, which lacks what ``current``'s
    own buffers hold and will give back when it is freed (its weights mapped from the
    file are page cache, already counted as available). A GPU's free memory is read
    once per process, before the first load (``devices.list_devices``), so it already
    counts them; a given budget is the user's figure for any one model."""
    if config.memory_budget is not None or current is None:
        return config
    budget = detect_budget(None)
    if budget.kind != "cpu":
        return config
    held = sum(size for name, size in current.info.buffers.items()
               if not name.endswith("_Mapped"))
    return config.model_copy(update={"memory_budget": f"{budget.total_bytes + held}B"})


def plan_or_none(config: ModelConfig, header: GGUFHeader) -> MemoryPlan | None:
    """The plan, or None for an architecture the planner does not know (llama.cpp
    then decides, as when the engine starts)."""
    try:
        return plan_for(config, header)
    except UnplannableModel:
        return None


def check_switch(config: ModelConfig, current: LoadedModel | None) -> Path:
    """The file ``config.path`` names, read and planned before anything is freed.
    Raises ModelFileError (missing, broken) or ModelDoesNotFit (with the plan's
    reason)."""
    if config.path is None:
        raise ModelFileError("no model file to switch to")
    path = Path(config.path).expanduser()
    header = read_gguf_header(path)
    plan = plan_or_none(planning_config(config, current), header)
    if plan is not None and not plan.fits:
        raise ModelDoesNotFit(f"{header.name} does not fit: {plan.verdict}")
    return path


def list_choices(config: ModelConfig, dirs: Sequence[str | Path],
                 current: LoadedModel | None) -> list[ModelChoice]:
    """Every model :func:`~engine.model.catalog.find_models` finds, described and
    planned for ``config`` as a replacement of ``current``."""
    planning = planning_config(config, current)
    loaded = _same_file_key(Path(current.info.path)) if current is not None else None
    return [describe_choice(item, planning, loaded) for item in find_models(dirs)]


def describe_choice(item: Found, config: ModelConfig, loaded: str | None) -> ModelChoice:
    base = {"name": item.name, "source": item.source, "path": str(item.path),
            "current": loaded is not None and _same_file_key(item.path) == loaded}
    if item.broken:
        return ModelChoice(**base, verdict="broken", reason=item.broken)
    try:
        header = read_gguf_header(item.path)
    except (ModelFileError, OSError, ValueError) as exc:
        reason = exc.message if isinstance(exc, ModelFileError) else str(exc)
        return ModelChoice(**base, verdict="broken", reason=reason)
    described = {"architecture": header.architecture, "parameters": parameter_count(header),
                 "quant": quant_name(header), "file_bytes": header.file_bytes,
                 "chat_template": header.chat_template is not None}
    try:
        plan = plan_or_none(config.model_copy(update={"path": item.path}), header)
    except (ModelFileError, ValueError, KeyError, ZeroDivisionError) as exc:
        return ModelChoice(**base, **described, verdict="no plan", reason=str(exc))
    if plan is None:
        return ModelChoice(**base, **described, verdict="no plan",
                           reason="the planner does not know this architecture: "
                                  "llama.cpp decides whether it loads")
    return ModelChoice(**base, **described, verdict=short_verdict(plan), reason=plan.verdict)


def short_verdict(plan: MemoryPlan) -> str:
    """The verdict's column, as ``kvchat models`` words it."""
    full = plan.n_gpu_layers == plan.n_layers + 1 or plan.pool == "cpu"
    if plan.fits and full:
        return "fits"
    if plan.fits and plan.pool == "gpu":
        return f"{plan.n_gpu_layers} of {plan.n_layers + 1} layers on GPU"
    return "does not fit"


def _same_file_key(path: Path) -> str:
    try:
        return os.path.normcase(str(path.resolve()))
    except OSError:
        return os.path.normcase(os.path.abspath(path))
