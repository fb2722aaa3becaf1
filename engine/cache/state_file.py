"""A saved state on disk: one file per state, its own index entry.

Layout: an 8-byte magic, the format version and the header's length (two little-endian
uint32), the header (JSON: the key, the window bookkeeping, the rendered text, the
lengths and a CRC-32 of everything after it), the cells' tokens and the logical tokens
(int32 each), then llama.cpp's sequence state (its last ``window_bytes``: a
sliding-window model's window layers at ``reply_at``). Files are written to a temporary name and
renamed, so a reader sees a whole file or none; the checksum catches the rest (a file
cut short, bytes changed on disk).
"""

from __future__ import annotations

import json
import struct
import zlib
from array import array
from pathlib import Path
from typing import Any

from engine.cache.entry import SavedState, Snapshot
from engine.cache.key import StateKey
from engine.errors import KvchatError
from engine.files.atomic import PRIVATE_FILE, atomic_write

MAGIC = b"KVCSTATE"
VERSION = 1
SUFFIX = ".kvstate"
_PREFIX = struct.Struct("<8sII")
_MAX_HEADER = 64 << 20


class StateFileError(KvchatError):
    """A state file that cannot be used: its message is the one-line reason."""

    code = "state_file"


def _tokens(values: list[int]) -> bytes:
    return array("i", values).tobytes()


def encode(state: SavedState) -> list[bytes | bytearray]:
    """The file's parts, in order, for ``state`` (which holds its data)."""
    assert state.data is not None
    snap = state.snap
    cells, logical = _tokens(snap.cells), _tokens(snap.logical)
    crc = zlib.crc32(state.data, zlib.crc32(logical, zlib.crc32(cells)))
    header = json.dumps({
        "id": state.id, "key": state.key.to_json(), "n_keep": snap.n_keep,
        "dropped": snap.dropped, "text": snap.text, "n_cells": len(snap.cells),
        "n_logical": len(snap.logical), "nbytes": state.nbytes, "reply_at": snap.reply_at,
        "window_bytes": state.window_bytes, "crc32": crc}).encode()
    return [_PREFIX.pack(MAGIC, VERSION, len(header)), header, cells, logical, state.data]


def write_parts(path: Path, parts: list[bytes | bytearray]) -> None:
    """Write a file atomically and private to the user (it holds a conversation's
    text): to a temporary name, synced, then renamed. OSError (a full disk) leaves no
    file behind."""
    atomic_write(path, parts, mode=PRIVATE_FILE)


def _header(f: Any, path: Path) -> tuple[dict[str, Any], int]:
    prefix = f.read(_PREFIX.size)
    if len(prefix) < _PREFIX.size:
        raise StateFileError(f"{path.name} is cut short")
    magic, version, length = _PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise StateFileError(f"{path.name} is not a state file")
    if version != VERSION:
        raise StateFileError(f"{path.name} has state format {version}, this kvchat reads "
                             f"{VERSION}")
    if length > _MAX_HEADER:
        raise StateFileError(f"{path.name} has a damaged header")
    raw = f.read(length)
    try:
        head = json.loads(raw)
        int(head["n_cells"]), int(head["n_logical"]), int(head["nbytes"])
    except (ValueError, KeyError, TypeError):
        raise StateFileError(f"{path.name} has a damaged header") from None
    return head, _PREFIX.size + length


def read_index(path: Path) -> SavedState:
    """The entry a file holds, without its state data (read when it is restored)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head, offset = _header(f, path)
            n_cells, n_logical = head["n_cells"], head["n_logical"]
            tokens = f.read(4 * (n_cells + n_logical))
    except OSError as exc:
        raise StateFileError(f"cannot read {path.name}: {exc.strerror}") from None
    if offset + len(tokens) + head["nbytes"] != size or len(tokens) != 4 * (n_cells + n_logical):
        raise StateFileError(f"{path.name} is {size} bytes, its header says "
                             f"{offset + 4 * (n_cells + n_logical) + head['nbytes']}")
    ids = array("i")
    ids.frombytes(tokens)
    values = ids.tolist()
    try:
        key = StateKey.from_json(head["key"])
        snap = Snapshot(values[:n_cells], int(head["n_keep"]), int(head["dropped"]),
                        str(head["text"]), values[n_cells:], int(head.get("reply_at", 0)))
        window = int(head.get("window_bytes", 0))
        if not 0 <= window <= int(head["nbytes"]):
            raise ValueError(window)
        return SavedState(str(head["id"]), key, snap, int(head["nbytes"]),
                          used=path.stat().st_mtime, path=path, file_bytes=size,
                          window_bytes=window)
    except (KeyError, TypeError, ValueError):
        raise StateFileError(f"{path.name} has a damaged header") from None
    except OSError as exc:
        raise StateFileError(f"cannot read {path.name}: {exc.strerror}") from None


def read_state(state: SavedState) -> bytearray:
    """The llama.cpp state of a file entry, its checksum verified."""
    path = state.path
    assert path is not None
    try:
        with open(path, "rb") as f:
            head, _offset = _header(f, path)
            tokens = f.read(4 * (head["n_cells"] + head["n_logical"]))
            data = bytearray(head["nbytes"])
            got = f.readinto(data)
            extra = f.read(1)
    except FileNotFoundError:
        raise StateFileError(f"{path.name} was deleted") from None
    except OSError as exc:
        raise StateFileError(f"cannot read {path.name}: {exc.strerror}") from None
    if got != len(data) or extra:
        raise StateFileError(f"{path.name} is cut short" if got != len(data)
                             else f"{path.name} is longer than its header says")
    cells = 4 * len(state.snap.cells)
    crc = zlib.crc32(data, zlib.crc32(tokens[cells:], zlib.crc32(tokens[:cells])))
    if crc != head["crc32"] or head["id"] != state.id:
        raise StateFileError(f"{path.name} fails its checksum")
    return data
