"""The quant types ``kvchat quantize`` makes, and the size the planner predicts for each.

A type is one of llama.cpp's ``llama_ftype`` mixes. The prediction is the memory
planner's: the file's own shape (``shape_for_header``) with the per-tensor types
llama.cpp's quantizer gives that mix (``engine/model/memory/shapes.py``), plus the
source's header bytes (metadata and vocabulary, copied as they are).
"""

from __future__ import annotations

from dataclasses import dataclass

from gguf import GGMLQuantizationType

from engine.errors import ConfigError
from engine.model.gguf_header import GGUFHeader
from engine.model.memory.shapes import QUANTS, QuantMix, shape_for_header, shape_header
from engine.model.quant_costs import UNQUANTIZED, quant_name

Q = GGMLQuantizationType


@dataclass(frozen=True)
class Target:
    name: str
    ftype: int
    """llama.cpp's ``llama_ftype``."""
    base: GGMLQuantizationType
    """The type most 2-D weights get."""


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("F16", 1, Q.F16), Target("BF16", 32, Q.BF16), Target("Q8_0", 7, Q.Q8_0),
    Target("Q6_K", 18, Q.Q6_K), Target("Q5_K_M", 17, Q.Q5_K), Target("Q5_K_S", 16, Q.Q5_K),
    Target("Q5_1", 9, Q.Q5_1), Target("Q5_0", 8, Q.Q5_0), Target("Q4_K_M", 15, Q.Q4_K),
    Target("Q4_K_S", 14, Q.Q4_K), Target("Q4_1", 3, Q.Q4_1), Target("Q4_0", 2, Q.Q4_0),
    Target("Q3_K_L", 13, Q.Q3_K), Target("Q3_K_M", 12, Q.Q3_K), Target("Q3_K_S", 11, Q.Q3_K),
    Target("Q2_K", 10, Q.Q2_K),
)}
"""Largest first."""


def parse_targets(spec: str) -> list[Target]:
    """``Q4_K_M,Q5_K_M`` -> targets, in the order given; ConfigError naming the valid
    types for one that is not."""
    names = [part.strip().upper() for part in spec.split(",") if part.strip()]
    if not names:
        raise ConfigError(f"--to needs a quant type (one of {', '.join(TARGETS)})")
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        raise ConfigError(f"unknown quant type {unknown[0]} (valid: {', '.join(TARGETS)})")
    return [TARGETS[n] for n in dict.fromkeys(names)]


def predicted_bytes(header: GGUFHeader, target: Target) -> int | None:
    """The planner's prediction of the file ``target`` makes of ``header``'s model;
    None where the planner does not know the architecture."""
    shape = shape_for_header(header)
    if shape is None:
        return None
    mix = QUANTS.get(target.name) or QuantMix(target.name, target.ftype, target.base)
    return header.data_offset + shape_header(shape, mix).file_bytes


def bits_per_weight(header: GGUFHeader) -> float:
    """Bits per weight of the 2-D tensors (what quantizing changes)."""
    n_bytes = n_weights = 0
    for t in header.tensors:
        if len(t.shape) >= 2:
            n = 1
            for d in t.shape:
                n *= d
            n_weights += n
            n_bytes += t.n_bytes
    return 8 * n_bytes / n_weights if n_weights else 0.0


def is_quantized(header: GGUFHeader) -> bool:
    return quant_name(header) not in UNQUANTIZED
