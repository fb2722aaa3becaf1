"""What a saved state is valid under: a state restores only into the same model file,
context size, KV type and window settings, under the same llama.cpp."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import llama_cpp

from engine.config import KVCacheConfig
from engine.model.loader import LoadedModel

_SAMPLE = 1 << 20
"""Bytes hashed at each end of the model file: the header and metadata at the start,
the last tensors' data at the end, so a file with the same header but other weights (a
fine-tune) differs too, without reading gigabytes."""


@dataclass(frozen=True)
class StateKey:
    """A state's validity: every field must match for it to be restored."""

    model: str
    """SHA-256 of the model file's first and last MiB and its size."""
    n_ctx: int
    kv_type: str
    flash_attn: bool | None
    batch_invariant: bool
    window: str
    """The KV window's settings that decide which cells a conversation keeps; with
    split streams (``kv_layout`` split, ``parallel`` > 1) their number too: a sequence
    holds ``n_ctx`` / streams cells there, and llama.cpp's state of a stream restores
    only into a context of as many streams."""
    llama_cpp: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StateKey:
        return cls(**{f.name: data[f.name] for f in fields(cls)})

    def differs(self, other: StateKey) -> str:
        """Why a state saved under ``other`` cannot be restored here; empty if it can."""
        names = {"model": "another model file", "n_ctx": "another context size",
                 "kv_type": "another KV type", "flash_attn": "another flash-attention setting",
                 "batch_invariant": "another batch-invariance setting",
                 "window": "other KV window settings", "llama_cpp": "another llama.cpp"}
        for f in fields(self):
            ours, theirs = getattr(self, f.name), getattr(other, f.name)
            if ours != theirs:
                detail = "" if f.name in ("model", "window") else f" ({theirs}, here {ours})"
                return f"saved for {names[f.name]}{detail}"
        return ""


def model_digest(path: Path) -> str:
    """SHA-256 over the file's size and its first and last MiB."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        digest.update(f.read(_SAMPLE))
        if size > _SAMPLE:
            f.seek(max(_SAMPLE, size - _SAMPLE))
            digest.update(f.read(_SAMPLE))
    return digest.hexdigest()


def state_key(lm: LoadedModel, policy: KVCacheConfig) -> StateKey:
    info = lm.info
    window = (f"evict={policy.evict} sink={policy.sink_tokens} "
              f"system={policy.keep_system_prompt}")
    streams = lm.ctx.params.n_seq_max
    if streams > 1 and not lm.ctx.params.kv_unified:
        window += f" streams={streams}"
    return StateKey(model=model_digest(Path(info.path)), n_ctx=lm.n_ctx,
                    kv_type=info.kv_type, flash_attn=info.flash_attn,
                    batch_invariant=info.batch_invariant, window=window,
                    llama_cpp=llama_cpp.__version__)
