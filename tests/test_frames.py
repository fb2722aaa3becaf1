"""How a streaming reply reaches the screen: frames of text and gauges, each shown in
one screen update."""

from __future__ import annotations

from itertools import pairwise

from engine.events import Eviction, KVUsage, Progress, TokenChunk
from tui.coalesce import FRAME_S, GAUGE_S, STALL_S, ReplyCoalescer


def frames_of(events: list, times: list[float]) -> list:
    now = [0.0]
    frames: list = []
    gather = ReplyCoalescer(lambda text, n, gauges: frames.append((now[0], text, n, gauges)),
                            lambda event: frames.append((now[0], event)),
                            clock=lambda: now[0])
    for at, event in zip(times, events, strict=True):
        now[0] = at
        gather.add(event)
    gather.flush()
    return frames


def kv(used: int) -> KVUsage:
    return KVUsage(used_cells=used, n_ctx=1024, reserved_cells=0, bytes_per_cell=None,
                   used_bytes=None, total_bytes=None)


def test_text_and_gauges_go_out_together_as_one_frame() -> None:
    events, times = [], []
    for i in range(60):  # a token every 10 ms, a KV sample and the speed every 16th
        events.append(TokenChunk(text="a", token_ids=[i]))
        times.append(i * 0.01)
        if i % 16 == 15:
            events += [Progress(completion_tokens=i + 1, tokens_per_s=100.0), kv(i + 1)]
            times += [i * 0.01, i * 0.01]
    frames = frames_of(events, times)
    text = "".join(f[1] for f in frames)
    assert text == "a" * 60 and sum(f[2] for f in frames) == 60
    # At most one frame per FRAME_S, each a text chunk with the gauges due by then.
    starts = [f[0] for f in frames[:-1]]
    assert all(b - a >= FRAME_S - 1e-9 for a, b in pairwise(starts))
    gauges = [g for f in frames for g in f[3]]
    # Every KV sample reaches the chart; only the latest speed is worth showing.
    assert [g.used_cells for g in gauges if isinstance(g, KVUsage)] == [16, 32, 48]
    assert len([g for g in gauges if isinstance(g, Progress)]) <= 3
    gauge_times = [f[0] for f in frames if f[3]]
    # (the last frame is the flush at the end, due or not)
    assert all(b - a >= GAUGE_S - 1e-9 for a, b in pairwise(gauge_times[:-1]))


def test_other_events_keep_their_place_after_what_was_gathered() -> None:
    ev = Eviction(reason="generation", evicted_tokens=16, start=4, end=20, kept_tokens=4,
                  shifted_tokens=100, at_turn_boundary=True, used_before=120, used_after=104,
                  elapsed_s=0.001, shift_s=0.0, shift_tokens=100, evicted_total=16)
    frames = frames_of([TokenChunk(text="a", token_ids=[1]), TokenChunk(text="b", token_ids=[2]),
                        ev, TokenChunk(text="c", token_ids=[3])], [0.0, 0.01, 0.02, 0.03])
    # The eviction sends what came before it first, as one frame.
    assert [f[1] if len(f) == 4 else f[1].type for f in frames] == ["ab", "eviction", "c"]


def test_a_frame_waits_until_the_screen_has_shown_the_last_one() -> None:
    now = [0.0]
    shown = [True]
    frames: list = []

    def post(text: str, n: int, gauges: list) -> None:
        frames.append((now[0], text))
        shown[0] = False  # the screen has not shown it yet

    gather = ReplyCoalescer(post, frames.append, clock=lambda: now[0],
                            ready=lambda: shown[0])
    for i in range(40):  # a token every 10 ms; the screen shows each frame 0.35 s late
        now[0] = 100 + i * 0.01
        if frames and not shown[0] and now[0] - frames[-1][0] >= 0.345:
            shown[0] = True
        gather.add(TokenChunk(text=str(i % 10), token_ids=[i]))
    gather.flush()
    text = "".join(f[1] for f in frames)
    assert text == "".join(str(i % 10) for i in range(40))  # nothing lost or reordered
    # Not one frame per FRAME_S but one per frame shown: gathered meanwhile.
    assert [round(f[0] - 100, 2) for f in frames] == [0.0, 0.35, 0.39]
    assert frames[1][1] == "".join(str(i % 10) for i in range(1, 36))


def test_text_held_for_the_screen_goes_out_when_the_screen_has_shown_the_last_frame() -> None:
    """The engine process may batch a reply's events a quarter of a second apart: text
    held back while the screen was busy goes out when the screen says it is done
    (``tick``), not with the next batch."""
    now = [100.0]
    shown = [True]
    frames: list = []

    def post(text: str, n: int, gauges: list) -> None:
        frames.append((now[0], text, [type(g).__name__ for g in gauges]))
        shown[0] = False

    gather = ReplyCoalescer(post, frames.append, clock=lambda: now[0],
                            ready=lambda: shown[0], frame_s=0.25, gauge_s=1.0)
    # One batch: the prompt's KV sample (a frame of its own), then the first tokens.
    gather.add(kv(40))
    gather.add(TokenChunk(text="Hello", token_ids=[1]))
    gather.add(TokenChunk(text=" world", token_ids=[2]))
    assert frames == [(100.0, "", ["KVUsage"])]
    gather.tick()  # the screen is still busy: nothing
    assert len(frames) == 1
    now[0], shown[0] = 100.03, True  # shown 30 ms later
    gather.tick()
    assert frames[1] == (100.03, "Hello world", [])
    gather.tick()  # nothing gathered since
    assert len(frames) == 2


def test_a_frame_the_screen_never_acknowledges_holds_the_next_for_a_second_at_most() -> None:
    now = [0.0]
    frames: list = []
    gather = ReplyCoalescer(lambda text, n, gauges: frames.append(now[0]), frames.append,
                            clock=lambda: now[0], ready=lambda: False)
    for i in range(300):
        now[0] = 100 + i * 0.01
        gather.add(TokenChunk(text="a", token_ids=[i]))
    assert [round(t - 100, 2) for t in frames] == [0.0, STALL_S, 2 * STALL_S]


def test_the_app_keeps_the_collector_off_its_long_lived_heap() -> None:
    """``tune_collector`` and ``settle_heap`` (the ``kvchat`` command, at load and after
    each reply): young collections become rare, and what is alive is frozen out of the
    full ones."""
    import gc

    from tui.heap import GEN0_THRESHOLD, settle_heap, tune_collector

    saved = gc.get_threshold()
    try:
        tune_collector()
        assert gc.get_threshold() == (GEN0_THRESHOLD, *saved[1:])
        garbage: list[object] = []
        garbage.append(garbage)  # a cycle: only the collector frees it
        del garbage
        settle_heap()
        assert gc.get_freeze_count() > 10_000
        assert gc.garbage == []
    finally:
        gc.unfreeze()
        gc.set_threshold(*saved)
