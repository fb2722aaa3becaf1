"""Where each engine event shows: the status line, the KV-cache and memory panes, the
reply's note. Mixed into :class:`tui.app.KvchatApp`."""

from __future__ import annotations

from textual.app import App

from engine.events import (
    ChatFormatFallback,
    Event,
    Eviction,
    KVUsage,
    MemorySnapshot,
    ModelLoaded,
    OutputCheck,
    Progress,
    PromptEvaluated,
    PromptTruncated,
    Queued,
    RouteDecision,
    SpecStats,
    StateCacheNote,
)
from tui.live import LiveReply
from tui.notes import route_note
from tui.widgets.chat_pane import ChatPane
from tui.widgets.kv_pane import KVPane
from tui.widgets.memory_pane import MemoryPane
from tui.widgets.status_line import StatusLine


class EventPanes(App[int]):
    last_route: RouteDecision | None
    _engine_died: bool

    def show_kv(self, samples: list[KVUsage]) -> None:
        """KV samples, oldest first: the chart takes each, the rest show the latest."""
        last = samples[-1]
        status = self.query_one(StatusLine)
        status.ctx_used = last.used_cells
        status.ctx_total = last.n_ctx  # a reply's own share when the cells are split
        status.evicted = last.evicted_total
        self.query_one(KVPane).show_usage(samples)
        self.query_one(MemoryPane).show_kv(last)

    def note_queue(self, live: LiveReply, event: Event) -> bool:
        """Where the reply stands in the engine's queue (``queued`` events, until its
        prompt is read): on its note, and on the status line while it is shown."""
        if isinstance(event, Queued):
            live.queued = event.position
        elif isinstance(event, PromptEvaluated) and live.queued:
            live.queued = None
        else:
            return False
        if live.widget is not None:
            live.widget.set_note(f"queued, position {live.queued}" if live.queued
                                 else live.route_note.removesuffix(" · "))
        if live.shown:
            self.query_one(StatusLine).state = (f"queued, position {live.queued}…"
                                                if live.queued else "generating…")
        return True

    async def show_event(self, event: Event, live: LiveReply | None = None) -> None:
        """An engine event, in the pane that shows it (``live``: the reply it is of)."""
        status = self.query_one(StatusLine)
        reply = live.widget if live is not None else None
        if live is not None and self.note_queue(live, event):
            return
        if isinstance(event, KVUsage):
            self.show_kv([event])
        elif isinstance(event, Progress):
            status.tokens_per_s = event.tokens_per_s
        elif isinstance(event, SpecStats):
            status.show_spec(event)
        elif isinstance(event, Queued):  # a shared server generates others' replies first
            status.state = (f"queued: {event.position} in the server's line, "
                            f"{event.in_flight} generating…")
        elif isinstance(event, PromptEvaluated) and status.state.startswith("queued"):
            status.state = "generating…"
        elif isinstance(event, Eviction):
            self.query_one(KVPane).show_eviction(event)
        elif isinstance(event, StateCacheNote):
            self.query_one(KVPane).show_state_cache(event)
        elif isinstance(event, MemorySnapshot):
            self.query_one(MemoryPane).show_snapshot(event)
        elif isinstance(event, ModelLoaded):  # the engine process was started again
            self._engine_died = False
            status.state = "generating…"
            self.query_one(MemoryPane).show_model(event)
            status.ctx_total = event.n_ctx
            self.notify(f"{event.name} loaded again in {event.load_s:.1f} s",
                        title="Engine restarted")
        elif isinstance(event, RouteDecision):
            self.last_route = event
            status.show_route(event)
            if live is not None:
                live.route_note = route_note(event) + " · "
            if reply is not None:
                reply.set_note(route_note(event))
        elif isinstance(event, OutputCheck):
            if reply is not None:
                reply.record_check(event)
        elif isinstance(event, PromptTruncated):
            # Said where it happened, above the reply, and not only in a toast.
            pane = self.query_one(ChatPane)
            await pane.add_notice(f"note: {event.message}", before=reply)
            self.notify(event.message, title="Message cut", severity="warning")
        elif isinstance(event, ChatFormatFallback):
            await self.query_one(ChatPane).add_notice(f"note: {event.message}", before=reply)
            self.notify(event.message, title="Chat template", severity="warning")
