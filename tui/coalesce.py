"""A reply's events, gathered between screen updates.

On a machine where decoding and the UI share CPU cores, every screen update is time
the decode does not get (docs/tui.md has the measurements). So the reply worker posts
frames, each shown in one screen update:

- tokens at most every :data:`FRAME_S`, joined into one chunk;
- gauges (KV usage, decode speed, speculation stats, memory) at most every
  :data:`GAUGE_S`: every KV sample (the chart draws them all), only the latest of
  the others, whose panes show a state. Gauges never force out the tokens gathered so
  far, so they ride along with a token update instead of costing a screen update of
  their own;
- everything else (evictions, route, checks, retries, the end) at once and in order,
  after whatever was gathered before it.

A frame waits, gathering, while the screen has not shown the one before it (``ready``
says whether it has): where the screen thread gets less CPU than the frames ask for,
frames would otherwise queue up in front of the key presses, each one late. The wait
is bounded by :data:`STALL_S`.

How often a reply's events move is decided here, once, by :func:`pacing`: the app
tells the engine its part (``ChatEngine.pace_events``: an engine in another process
then hands events over at most every ``relay_gap_s``, tokens merged, since each
hand-over wakes both processes), and gives the coalescer the frame and gauge intervals.
The engine's gap only thins the hand-overs; the coalescer is still what turns them into
frames, the one step every backend needs: an engine on a thread or a server hands
events over as they come, and the gap is at most a frame, so it never holds a frame
back.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from engine.events import Event, KVUsage, MemorySnapshot, Progress, SpecStats, TokenChunk

FRAME_S = 0.1
"""Tokens that arrive within this long of the last update go to the screen together.
Ten updates a second reads as live and leaves the CPU to decoding."""
GAUGE_S = 0.25
"""Pane updates (KV chart, memory bar, status line speed) at most four a second."""

SOURCE_FRAME_S = 0.25
"""Frames while a reply streams as source (:mod:`tui.widgets.source_stream`), where the
screen shares every core with decoding: four a second still reads as live."""
SOURCE_GAUGE_S = 1.0
"""Pane updates then: once a second."""

RELAY_GAP_S = 0.04
"""How often, at most, an engine in another process hands a reply's events over while
frames come every :data:`FRAME_S`. Each hand-over wakes both processes: one per
speculative round or token otherwise (430 token events for a 512-token reply of the
bundled model on two cores, 89 with the gap). 40 ms is well inside a frame, and the
first event of a reply is never held."""

STALL_S = 1.0
"""A frame not acknowledged by the screen within this long no longer holds the next."""


@dataclass(frozen=True)
class Pacing:
    """How often a reply's events move on their way to the screen."""

    frame_s: float
    """Text frames at most this often (the coalescer)."""
    gauge_s: float
    """Pane updates at most this often (the coalescer)."""
    relay_gap_s: float
    """The engine's hand-overs at most this often (``ChatEngine.pace_events``)."""


def pacing(source_view: bool) -> Pacing:
    """The pace for the app's view of a streaming reply: in source view the engine
    process batches at the frame interval itself, since four frames a second is all
    the screen takes."""
    if source_view:
        return Pacing(SOURCE_FRAME_S, SOURCE_GAUGE_S, relay_gap_s=SOURCE_FRAME_S)
    return Pacing(FRAME_S, GAUGE_S, relay_gap_s=RELAY_GAP_S)

GAUGES = (KVUsage, Progress, SpecStats, MemorySnapshot)


class ReplyCoalescer:
    """Feed it a reply's events in order; it calls ``post_frame(text, n_tokens, gauges)``
    and ``post_event(event)`` as described above, and no new frame while ``ready()``
    is False (the screen has not shown the last one yet). Call :meth:`flush` at the
    end: it sends what is left whatever ``ready`` says."""

    def __init__(self, post_frame: Callable[[str, int, list[Event]], None],
                 post_event: Callable[[Event], None],
                 clock: Callable[[], float] = time.perf_counter,
                 ready: Callable[[], bool] = lambda: True,
                 frame_s: float = FRAME_S, gauge_s: float = GAUGE_S) -> None:
        self._post_frame = post_frame
        self._frame_s = frame_s
        self._gauge_s = gauge_s
        self._post_event = post_event
        self._clock = clock
        self._ready = ready
        self._text: list[str] = []
        self._n_tokens = 0
        self._gauges: list[Event] = []
        self._last_tokens = 0.0
        self._last_gauges = 0.0

    def add(self, event: Event) -> None:
        now = self._clock()
        if isinstance(event, TokenChunk):
            self._text.append(event.text)
            self._n_tokens += len(event.token_ids)
            if now - self._last_tokens >= self._frame_s and self._may_send(now):
                self._send(now, gauges=now - self._last_gauges >= self._gauge_s)
        elif isinstance(event, GAUGES):
            if not isinstance(event, KVUsage):
                self._gauges = [e for e in self._gauges if type(e) is not type(event)]
            self._gauges.append(event)
            # Nothing streaming to ride along with (a prompt being read): a frame of
            # their own, no sooner than a frame of text would have been.
            last = max(self._last_tokens, self._last_gauges)
            if not self._text and now - last >= self._gauge_s and self._may_send(now):
                self._send(now, gauges=True)
        else:
            self.flush()
            self._post_event(event)

    def tick(self) -> None:
        """The screen has shown the last frame: send the text gathered meanwhile if a
        frame of it is due, instead of holding it until the next event arrives (which,
        batched by the engine process, may be a quarter of a second away)."""
        now = self._clock()
        if self._text and now - self._last_tokens >= self._frame_s and self._may_send(now):
            self._send(now, gauges=now - self._last_gauges >= self._gauge_s)

    def _may_send(self, now: float) -> bool:
        last = max(self._last_tokens, self._last_gauges)
        return self._ready() or now - last >= STALL_S

    def flush(self) -> None:
        self._send(self._clock(), gauges=True)

    def _send(self, now: float, *, gauges: bool) -> None:
        """One frame: the text gathered, and the gauges if their time has come; the app
        shows both in one screen update."""
        gathered = self._gauges if gauges else []
        if not self._text and not gathered:
            return
        self._post_frame("".join(self._text), self._n_tokens, list(gathered))
        if self._text:
            self._text.clear()
            self._n_tokens = 0
            self._last_tokens = now
        if gathered:
            self._gauges = []
            self._last_gauges = now
