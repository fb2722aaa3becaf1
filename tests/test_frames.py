"""How a streaming reply reaches the screen: frames of text and gauges, each shown in
one screen update."""

from __future__ import annotations

from itertools import pairwise

from engine.events import Eviction, KVUsage, Progress, TokenChunk
from tui.coalesce import FRAME_S, GAUGE_S, ReplyCoalescer


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
