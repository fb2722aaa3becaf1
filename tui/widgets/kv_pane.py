"""The KV cache: cells used against the context over time, the reserve for the reply
in flight, and every eviction as it happens."""

from __future__ import annotations

import time

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Log, Static

from engine.events import Eviction, KVUsage, StateCacheNote
from tui.widgets.cells_chart import CellsChart
from tui.widgets.live_text import LiveText
from tui.widgets.state_cache_view import StateCacheView
from tui.widgets.steady_scrollbars import SteadyScrollbars

EVICTION_LOG_LINES = 200


def eviction_line(ev: Eviction) -> str:
    """``12:03:04 gen -124 [16,140) 0.8+109.6ms`` (then ``mid-turn`` when the span cut a
    message): when, why, how many tokens, which cache positions, and how long the
    bookkeeping and the first decode after it (the deferred shift) took."""
    when = time.strftime("%H:%M:%S", time.localtime(ev.ts))
    reason = "gen" if ev.reason == "generation" else "prompt"
    boundary = "" if ev.at_turn_boundary else " mid-turn"
    return (f"{when} {reason} -{ev.evicted_tokens} [{ev.start},{ev.end}) "
            f"{ev.elapsed_s * 1000:.1f}+{ev.shift_s * 1000:.1f}ms{boundary}")


class EvictionLog(SteadyScrollbars, Log):
    """The eviction log, repainted only when it changes (see :mod:`steady_scrollbars`)."""


class KVPane(Vertical):
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.border_title = "KV cache"
        self.last: KVUsage | None = None
        self.evictions = 0

    def compose(self) -> ComposeResult:
        yield LiveText("no cache yet", id="kv-headline")
        yield CellsChart(id="kv-chart")
        yield StateCacheView(id="kv-states")
        yield Static("evictions: none yet", id="kv-log-title", markup=False)
        yield EvictionLog(max_lines=EVICTION_LOG_LINES, id="kv-log", auto_scroll=True)

    def reset(self, n_ctx: int) -> None:
        """Another model's empty cache: the chart, the log and the counts start again."""
        self.last = None
        self.evictions = 0
        chart = self.query_one(CellsChart)
        chart.samples.clear()
        chart.n_ctx = n_ctx
        chart.refresh()
        self.query_one("#kv-log", Log).clear()
        self.query_one("#kv-log-title", Static).update("evictions: none yet")
        self.set_class(False, "-full")
        if n_ctx:
            self.show_empty(n_ctx)
        else:
            self.query_one("#kv-headline", LiveText).show("no cache: no model is loaded")

    def show_empty(self, n_ctx: int) -> None:
        """A model with an empty cache, in the headline's shape while a reply streams
        (it then keeps its height: no layout of the screen at the first tokens)."""
        if self.last is None:
            self.query_one("#kv-headline", LiveText).show(
                f"0/{n_ctx} cells (0%) · reserved 0 (0%) · kept 0 · evicted 0")

    def show_usage(self, samples: list[KVUsage]) -> None:
        """KV samples, oldest first: each goes on the chart, the latest in the headline."""
        kv = self.last = samples[-1]
        self.query_one(CellsChart).add(
            [(s.used_cells, s.reserved_cells) for s in samples], kv.n_ctx)
        pct = kv.used_cells / kv.n_ctx if kv.n_ctx else 0.0
        reserve = kv.reserved_cells / kv.n_ctx if kv.n_ctx else 0.0
        self.query_one("#kv-headline", LiveText).show(
            f"{kv.used_cells}/{kv.n_ctx} cells ({pct:.0%}) · reserved {kv.reserved_cells} "
            f"({reserve:.0%}) · kept {kv.kept_cells} · evicted {kv.evicted_total}")
        full = pct + reserve > 0.9
        if full != self.has_class("-full"):  # a class change restyles the pane
            self.set_class(full, "-full")

    def show_state_cache(self, note: StateCacheNote) -> None:
        """Saved conversation states: the pool (it outlives a model switch)."""
        self.query_one(StateCacheView).add(note)

    def show_eviction(self, ev: Eviction) -> None:
        self.evictions += 1
        self.query_one("#kv-log", Log).write_line(eviction_line(ev))
        self.query_one("#kv-log-title", Static).update(
            f"evictions: {self.evictions}, {ev.evicted_total} tokens in all")
