"""The state cache's pool under the KV pane: how many conversations are saved, the
bytes each tier holds against its budget, the last thing it did and its last
evictions (engine/cache/; fed by ``state_cache`` events, which carry the totals)."""

from __future__ import annotations

import time
from collections import deque

from engine.events import StateCacheNote
from tui.memory_view import human_bytes
from tui.widgets.live_text import LiveText

EVICTIONS_SHOWN = 3
_TIER = {"ram": "RAM", "disk": "disk", None: "the cache"}


def tier_total(used: int, budget: int) -> str:
    return f"{human_bytes(used)}/{human_bytes(budget)}" if budget else "off"


def note_line(note: StateCacheNote) -> str:
    """``restore 557 tokens from RAM, 1.1 ms`` and the like, for a person."""
    tier = _TIER[note.tier]
    if note.action == "restore":
        return f"restored {note.tokens} tokens from {tier} in {note.ms:.1f} ms"
    if note.action == "save":
        return f"saved {note.tokens} tokens to {tier} ({human_bytes(note.bytes)})"
    if note.action == "evict":
        return f"evicted {note.tokens} tokens from {tier}: {note.reason}"
    return f"{note.action}: {note.reason}" if note.reason else note.action


class StateCacheView(LiveText):
    """Hidden until the engine first reports on its state cache (a backend without one
    never does)."""

    DEFAULT_CSS = "StateCacheView { height: auto; color: $text-muted; display: none; }"

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("", id=id)
        self.evictions: deque[str] = deque(maxlen=EVICTIONS_SHOWN)

    def add(self, note: StateCacheNote) -> None:
        if not self.display:
            self.display = True  # one layout, at the first note
        if note.action == "evict":
            when = time.strftime("%H:%M:%S", time.localtime(note.ts))
            self.evictions.appendleft(f"  {when} {note_line(note)}")
        lines = [f"saved states: {note.entries} · RAM "
                 f"{tier_total(note.ram_bytes, note.ram_budget)} · disk "
                 f"{tier_total(note.disk_bytes, note.disk_budget)}",
                 f"last: {note_line(note)}"]
        if self.evictions:
            lines += ["evictions:", *self.evictions]
        self.show("\n".join(lines))
