"""A saved state: which tokens its cells hold, the window bookkeeping that names them,
and how well it serves a new prompt."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from engine.cache.key import StateKey

Tier = Literal["ram", "disk"]


@dataclass
class Snapshot:
    """A sequence as the KV cache keeps it (see ``engine/decode/kv_window.py``)."""

    cells: list[int]
    """The token at each cache position."""
    n_keep: int
    dropped: int
    """Tokens evicted after the kept prefix: when not 0, ``cells`` is not a prefix of
    ``logical`` but ``logical[:n_keep] + logical[n_keep + dropped:]``."""
    text: str
    """The conversation as rendered, last reply included; empty when not known."""
    logical: list[int]
    """Its tokens as the model saw them (the reply as generated)."""
    reply_at: int = 0
    """Cells before the last reply (the last prompt's end); 0 when not known."""


@dataclass(frozen=True)
class Match:
    """How much of a snapshot a prompt can reuse."""

    common: int
    """Leading cells that hold what the prompt's window would hold."""
    via_text: bool
    """The prompt's text extends the snapshot's: its tokens extend ``logical`` exactly,
    the window bookkeeping included."""


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def match(snap: Snapshot, text: str, fresh: Sequence[int]) -> Match:
    """What ``snap`` offers a prompt rendered as ``text`` and tokenized as ``fresh``.

    A prompt that extends the saved text keeps every cell, window and all. Otherwise
    the cells are compared with the prompt's tokens; after an eviction the cells past the
    kept prefix hold later tokens at earlier positions, computed over another history,
    so only the kept prefix can match then."""
    if snap.text and text.startswith(snap.text):
        return Match(len(snap.cells), True)
    common = common_prefix(snap.cells, fresh)
    return Match(min(common, snap.n_keep) if snap.dropped else common, False)


@dataclass
class SavedState:
    """One entry of the pool: in RAM (``data``) or in a file (``path``), never both."""

    id: str
    key: StateKey
    snap: Snapshot
    nbytes: int
    """Size of llama.cpp's sequence state."""
    used: float = field(default_factory=time.time)
    """When it was saved or last restored: the least recent goes first."""
    data: bytes | None = None
    path: Path | None = None
    file_bytes: int = 0
    """The file's size, header and tokens included (what the disk budget counts)."""
    window_bytes: int = 0
    """The last bytes of the data that are not the sequence's state but a sliding-window
    model's window layers as they were at ``snap.reply_at`` (see ``SeqStates``)."""

    @property
    def tier(self) -> Tier:
        return "ram" if self.data is not None else "disk"

    @property
    def ram_bytes(self) -> int:
        """What the RAM budget counts: the state and its two token lists."""
        return self.nbytes + 4 * (len(self.snap.cells) + len(self.snap.logical))
