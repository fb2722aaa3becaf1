"""The sliding-window arithmetic, without a model."""

from __future__ import annotations

from engine.decode.kv_window import choose_span, turn_boundaries, window

EOT = 99


def test_window_keeps_prefix_and_drops_oldest_after_it() -> None:
    logical = list(range(20))
    assert window(logical, 3, 0) == logical
    assert window(logical, 3, 5) == [0, 1, 2, *range(8, 20)]
    # A later turn extends the logical tokens; the same formula maps it onto the cache.
    assert window([*logical, 20, 21], 3, 5)[-2:] == [20, 21]


def test_turn_boundaries_are_after_end_of_turn_tokens() -> None:
    tokens = [1, 2, EOT, 3, 4, EOT, 5]
    assert turn_boundaries(tokens, lambda t: t == EOT) == [3, 6]
    assert turn_boundaries(tokens, lambda t: t == EOT, start=3) == [6]


def test_span_prefers_a_turn_boundary_past_the_target() -> None:
    span = choose_span(100, n_keep=10, need=1, target=20, boundaries=[15, 36, 70], limit=99)
    assert (span.start, span.end, span.at_turn_boundary) == (10, 36, True)


def test_span_cuts_mid_message_when_no_boundary_is_near() -> None:
    span = choose_span(100, n_keep=10, need=1, target=20, boundaries=[90], limit=99)
    assert (span.start, span.end, span.at_turn_boundary) == (10, 30, False)


def test_span_takes_a_smaller_boundary_that_still_frees_what_is_needed() -> None:
    span = choose_span(100, n_keep=10, need=5, target=20, boundaries=[17, 90], limit=99)
    assert (span.end, span.at_turn_boundary) == (17, True)


def test_span_never_passes_the_limit() -> None:
    span = choose_span(50, n_keep=4, need=10, target=40, boundaries=[], limit=30)
    assert span.end == 30 and span.size == 26
