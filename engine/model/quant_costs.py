"""What a quant costs in quality, as measured: the table ``kvchat quality`` keeps.

A row is one model (its identity: architecture, ``general.name`` and parameter count,
so every quant of one model shares it) in one quant, with what was measured against a
reference of the same model: mean and 99th-percentile KL divergence of the next-token
distributions, top-1 agreement, perplexities, and the code pass rate when it was run.
``kvchat plan`` reads it for its "a Q2_K file" rows and the loader for the model it
loads; neither measures anything. The table is ``quant-costs.json`` in the data dir
(``$KVCHAT_HOME``, else the platform's).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import platformdirs
from pydantic import BaseModel, ConfigDict, ValidationError

from engine.files.atomic import atomic_write, private_dir
from engine.model import catalog
from engine.model.gguf_header import GGUFHeader

UNQUANTIZED = ("F32", "F16", "BF16")
DEQUANTIZED_FROM = "kvchat.dequantized_from"
"""Metadata key of an F16 reference written from a quantized file: that file's quant."""
TABLE_NAME = "quant-costs.json"


def quant_name(header: GGUFHeader) -> str:
    """The file's quant as llama.cpp's tools name it (``Q4_K_M``, ``F16``, ``F32``)."""
    name = catalog.quant_name(header) or "unknown"
    return "F32" if name == "ALL_F32" else name


def model_identity(header: GGUFHeader) -> str:
    """What every quant of one model shares: architecture, name, parameter count."""
    return f"{header.architecture}|{header.name}|{catalog.parameter_count(header)}"


def reference_label(header: GGUFHeader) -> str:
    """How a reference is described: its quant, and what an F16 reference was
    dequantized from (losses are then measured against that file, not the original)."""
    source = header.metadata.get(DEQUANTIZED_FROM)
    quant = quant_name(header)
    return f"{quant} dequantized from {source}" if source else quant


class QuantCost(BaseModel):
    """One quant of one model, measured against a reference of the same model."""

    model_config = ConfigDict(frozen=True)

    identity: str
    model: str
    quant: str
    reference: str
    """The reference's quant, e.g. ``F16`` or ``F16 dequantized from Q4_1``."""
    file_bytes: int
    kl_mean: float
    kl_p99: float
    top1: float
    """Share of scored positions where both models' most likely token is the same."""
    ppl: float
    ppl_reference: float
    tokens: int
    """Positions scored."""
    text: str
    """Name of the text scored."""
    code_pass_rate: float | None = None
    measured_at: str = ""


def table_path() -> Path:
    home = os.environ.get("KVCHAT_HOME")
    base = Path(home).expanduser() if home else Path(platformdirs.user_data_dir("kvchat"))
    return base / TABLE_NAME


def load_costs(path: Path | None = None) -> dict[str, QuantCost]:
    """Every row, keyed ``identity#quant``; an unreadable table reads as empty (it is
    only a record of measurements, made again by running ``kvchat quality``)."""
    path = path or table_path()
    try:
        raw: Any = json.loads(path.read_text(encoding="utf-8"))
        rows = raw.get("rows", []) if isinstance(raw, dict) else []
        costs = [QuantCost.model_validate(r) for r in rows]
    except (OSError, ValueError, ValidationError):
        return {}
    return {_key(c.identity, c.quant): c for c in costs}


def record_costs(costs: list[QuantCost], path: Path | None = None) -> Path:
    """Add or replace rows; written to a temporary file and renamed."""
    path = path or table_path()
    table = load_costs(path)
    for cost in costs:
        table[_key(cost.identity, cost.quant)] = cost
    private_dir(path.parent)
    rows = [c.model_dump() for c in sorted(table.values(), key=lambda c: (c.identity, c.quant))]
    atomic_write(path, json.dumps({"version": 1, "rows": rows}, indent=1) + "\n")
    return path


def lookup(identity: str, quant: str, path: Path | None = None) -> QuantCost | None:
    return load_costs(path).get(_key(identity, quant))


def describe(cost: QuantCost | None) -> str:
    """One line for a plan row or the memory pane."""
    if cost is None:
        return "quality not measured"
    line = (f"KL {cost.kl_mean:.4f} (p99 {cost.kl_p99:.3f}), top-1 {cost.top1:.1%} "
            f"vs {cost.reference}")
    if cost.code_pass_rate is not None:
        line += f", code {cost.code_pass_rate:.0%}"
    return line


def _key(identity: str, quant: str) -> str:
    return f"{identity}#{quant}"
