"""The pool of saved states: RAM first, then files on disk, least recently used evicted
first from each, what RAM evicts spilled to disk.

One pool serves an engine for its whole life, across model switches: a state says which
model and settings it was saved under (its key), and only a matching key restores. The
disk tier is a folder of state files, each its own index entry: a new process finds them
by reading their headers, and files another process wrote are picked up the same way.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import platformdirs

from engine.cache.entry import Match, SavedState, Snapshot, Tier, match
from engine.cache.key import StateKey
from engine.cache.state_file import (
    SUFFIX,
    StateFileError,
    encode,
    read_index,
    read_state,
    write_parts,
)
from engine.config import CacheConfig, budget_bytes
from engine.events import StateCacheAction, StateCacheNote
from engine.files.atomic import private_dir
from engine.model.memory.budget import system_memory

log = logging.getLogger("kvchat.cache")

RAM_SHARE = 0.10
RAM_CAP = 4 << 30
STALE_TMP_S = 600.0
"""A temporary state file this old is no write in progress (another process may be
writing a newer one)."""


def default_dir() -> Path:
    """``state-cache/`` in the data dir: ``$KVCHAT_HOME``, else the platform's (the
    store's ``default_data_dir``, which a wing may not import)."""
    home = os.environ.get("KVCHAT_HOME")
    base = Path(home).expanduser() if home else Path(platformdirs.user_data_dir("kvchat"))
    return base / "state-cache"


def default_ram_budget() -> int:
    available, _total = system_memory()
    return min(RAM_CAP, int(available * RAM_SHARE))


class StateCache:
    """Saved states by tier. Every change appends a ``state_cache`` note to ``notes``,
    which its user sends on as events."""

    def __init__(self, config: CacheConfig | None = None) -> None:
        self.config = config = config or CacheConfig()
        self.ram_budget = (default_ram_budget() if config.ram_budget is None
                           else budget_bytes(config.ram_budget))
        self.disk_budget = budget_bytes(config.disk_budget)
        self.dir = Path(config.dir).expanduser() if config.dir else default_dir()
        self.enabled = config.enabled and (self.ram_budget > 0 or self.disk_budget > 0)
        self._ram: dict[str, SavedState] = {}
        self._disk: dict[str, SavedState] = {}
        self._skipped: set[str] = set()
        """Files not to read again: another format's, or ones that failed."""
        self.notes: list[StateCacheNote] = []
        self._clock = 0.0

    # -- totals -------------------------------------------------------------------

    @property
    def ram_bytes(self) -> int:
        return sum(e.ram_bytes for e in self._ram.values())

    @property
    def disk_bytes(self) -> int:
        return sum(e.file_bytes for e in self._disk.values())

    def entries(self) -> list[SavedState]:
        return [*self._ram.values(), *self._disk.values()]

    def note(self, action: StateCacheAction, tier: Tier | None = None, *, tokens: int = 0,
             nbytes: int = 0, ms: float = 0.0, reason: str = "") -> None:
        self.notes.append(StateCacheNote(
            action=action, tier=tier, tokens=tokens, bytes=nbytes, ms=ms, reason=reason,
            entries=len(self._ram) + len(self._disk), ram_bytes=self.ram_bytes,
            ram_budget=self.ram_budget, disk_bytes=self.disk_bytes,
            disk_budget=self.disk_budget))
        if action in ("miss", "drop") and reason:
            log.info("state cache %s: %s", action, reason)

    def take_notes(self) -> list[StateCacheNote]:
        notes, self.notes = self.notes, []
        return notes

    # -- finding ------------------------------------------------------------------

    def scan(self) -> None:
        """Index the state files not seen yet (this process's are known already)."""
        if not self.disk_budget:
            return
        try:
            found = [e for e in os.scandir(self.dir) if e.is_file()]
        except OSError:
            return  # no folder yet: nothing saved
        names = [e.name for e in found if e.name.endswith(SUFFIX)]
        for e in found:  # a write that a killed process left half done
            if e.name.endswith(".tmp") and SUFFIX in e.name \
                    and time.time() - e.stat().st_mtime > STALE_TMP_S:
                with contextlib.suppress(OSError):
                    os.unlink(e.path)
        for name in names:
            if name in self._disk or name in self._skipped:
                continue
            try:
                self._disk[name] = read_index(self.dir / name)
            except StateFileError as exc:
                self._bad_file(self.dir / name, exc)

    def best(self, key: StateKey, text: str,
             fresh: Sequence[int]) -> tuple[SavedState | None, Match, str]:
        """The saved state under ``key`` that shares the most with the prompt, and how
        much; with why a state that would have shared more cannot be used (saved for
        another model or settings), empty when none would."""
        self.scan()
        found, best, other, why = None, Match(0, False), 0, ""
        for entry in self.entries():
            m = match(entry.snap, text, fresh)
            if entry.key != key:
                if m.common > other:
                    other, why = m.common, key.differs(entry.key)
            elif (m.common, m.via_text, entry.used) > (best.common, best.via_text,
                                                       found.used if found else 0.0):
                found, best = entry, m
        return found, best, why if other > best.common else ""

    def load(self, entry: SavedState) -> bytearray:
        """The state's llama.cpp data. StateFileError when its file cannot be used; the
        entry is gone from the pool then (and a damaged file from the disk)."""
        if entry.data is not None:
            return entry.data
        try:
            return read_state(entry)
        except StateFileError as exc:
            self._disk.pop(entry.path.name if entry.path else "", None)
            self._bad_file(entry.path, exc, noted=False)
            raise

    def _now(self) -> float:
        """Wall-clock time (files from other processes are ordered by their mtime),
        strictly increasing here so that two saves in one clock tick keep their order."""
        self._clock = max(time.time(), self._clock + 1e-6)
        return self._clock

    def touch(self, entry: SavedState) -> None:
        """``entry`` was restored: it is the most recently used now."""
        entry.used = self._now()
        if entry.path is not None:
            with contextlib.suppress(OSError):
                os.utime(entry.path)  # another process orders the files by this

    # -- saving -------------------------------------------------------------------

    def put(self, key: StateKey, snap: Snapshot, data: bytearray, *,
            started: float | None = None, window_bytes: int = 0) -> SavedState | None:
        """Keep a new state, in RAM if it fits the budget, else on disk; None when it fits
        neither (noted as a drop). A state it extends (the same conversation saved
        before, fewer cells) is replaced. ``started``: when reading it began, for the
        note's milliseconds."""
        started = time.perf_counter() if started is None else started
        entry = SavedState(uuid.uuid4().hex[:16], key, snap, len(data), self._now(), data=data,
                           window_bytes=window_bytes)
        for old in self.entries():
            if (old.key == key and old.snap.n_keep == snap.n_keep
                    and old.snap.dropped == snap.dropped
                    and len(old.snap.cells) <= len(snap.cells)
                    and old.snap.cells == snap.cells[:len(old.snap.cells)]):
                self._remove(old)
        if entry.ram_bytes <= self.ram_budget:
            self._room_in_ram(entry.ram_bytes)
            self._ram[entry.id] = entry
            self.note("save", "ram", tokens=len(snap.cells), nbytes=entry.nbytes,
                      ms=(time.perf_counter() - started) * 1000)
            return entry
        if self._to_disk(entry):
            self.note("save", "disk", tokens=len(snap.cells), nbytes=entry.file_bytes,
                      ms=(time.perf_counter() - started) * 1000)
            return entry
        return None

    def _room_in_ram(self, size: int) -> None:
        while self._ram and self.ram_bytes + size > self.ram_budget:
            victim = min(self._ram.values(), key=lambda e: e.used)
            del self._ram[victim.id]
            spilled = self._to_disk(victim)
            self.note("evict", "ram", tokens=len(victim.snap.cells), nbytes=victim.nbytes,
                      reason="moved to disk" if spilled else "dropped")

    def _to_disk(self, entry: SavedState) -> bool:
        """Write ``entry`` to its file, evicting older files to make room; False (noted)
        when it cannot be kept there."""
        assert entry.data is not None
        parts = encode(entry)
        size = sum(len(p) for p in parts)
        if size > self.disk_budget:
            why = "the disk tier is off" if not self.disk_budget else \
                f"{size / 2**20:.1f} MiB is more than the disk budget"
            self.note("drop", "disk", tokens=len(entry.snap.cells), nbytes=size, reason=why)
            return False
        while self._disk and self.disk_bytes + size > self.disk_budget:
            victim = min(self._disk.values(), key=lambda e: e.used)
            self._remove(victim)
            self.note("evict", "disk", tokens=len(victim.snap.cells),
                      nbytes=victim.file_bytes, reason="least recently used")
        path = self.dir / f"{entry.id}{SUFFIX}"
        try:
            private_dir(self.dir)
            write_parts(path, parts)
        except OSError as exc:
            self.note("drop", "disk", tokens=len(entry.snap.cells), nbytes=size,
                      reason=f"cannot write {path.name}: {exc.strerror or exc}")
            return False
        entry.data, entry.path, entry.file_bytes = None, path, size
        self._disk[path.name] = entry
        return True

    def _remove(self, entry: SavedState) -> None:
        self._ram.pop(entry.id, None)
        if entry.path is not None and self._disk.pop(entry.path.name, None) is not None:
            entry.path.unlink(missing_ok=True)

    def _bad_file(self, path: Path | None, exc: StateFileError, *, noted: bool = True) -> None:
        if path is None:
            return
        self._skipped.add(path.name)
        if "state format" not in exc.message:  # another kvchat's format: not ours to delete
            path.unlink(missing_ok=True)
        if noted:
            self.note("miss", "disk", reason=exc.message)

    def close(self) -> None:
        """Move what RAM holds to disk, most recent first, as far as the budget goes:
        the states outlive the process."""
        for entry in sorted(self._ram.values(), key=lambda e: e.used, reverse=True):
            del self._ram[entry.id]
            self._to_disk(entry)
        self.notes.clear()
