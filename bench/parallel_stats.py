"""Figures of N replies decoded together, from their token arrival times.

Every path measured under load (kvchat's engine, llama-cpp-python's server) reports
each reply as ``{"sent_s", "stamps": [(seconds, tokens), ...], "done": {...}}``, times
from one origin (the moment the replies were started), so one set of definitions
covers them all:

- aggregate decode tok/s: tokens that arrived while *every* reply was decoding (after
  the last reply's first token, up to the first reply's last token) over that span:
  what llama-batched-bench's S_TG counts (N rows per step, all sequences active). When
  that span is empty (replies that barely overlapped) the whole span is used: all
  tokens after each reply's first over first-first to last-last.
- per-reply decode tok/s: (tokens - 1) / (last arrival - first arrival) of that reply;
  the engine's own figure (``Done.tokens_per_s``, measured on its thread) beside it.
- fairness: the slowest reply's rate over the mean rate.
- time to first token under load: each reply's first arrival after it was sent.
"""

from __future__ import annotations

import statistics
from itertools import pairwise
from typing import Any


def _rate(stamps: list[tuple[float, int]]) -> float:
    tokens = sum(k for _, k in stamps)
    span = stamps[-1][0] - stamps[0][0] if stamps else 0.0
    return (tokens - 1) / span if span > 0 else 0.0


def aggregate_rate(replies: list[dict[str, Any]]) -> tuple[float, str]:
    """Tokens/s of all replies together, and which span it was measured over."""
    stamps = [r["stamps"] for r in replies if r["stamps"]]
    start = max(s[0][0] for s in stamps)
    end = min(s[-1][0] for s in stamps)
    if end > start:
        tokens = sum(k for s in stamps for t, k in s if start < t <= end)
        return tokens / (end - start), "all decoding"
    first = min(s[0][0] for s in stamps)
    last = max(s[-1][0] for s in stamps)
    tokens = sum(sum(n for _, n in s) - 1 for s in stamps)
    return (tokens / (last - first) if last > first else 0.0), "whole span"


def run_figures(replies: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures of one run of N replies."""
    rates = [_rate(r["stamps"]) for r in replies]
    ttfts = [r["stamps"][0][0] - r["sent_s"] for r in replies]
    aggregate, span = aggregate_rate(replies)
    engine = [r["done"]["tokens_per_s"] for r in replies if r.get("done", {}).get(
        "tokens_per_s")]
    out: dict[str, Any] = {
        "aggregate_tokens_per_s": aggregate, "aggregate_span": span,
        "per_reply_tokens_per_s": rates,
        "mean_reply_tokens_per_s": statistics.fmean(rates),
        "min_reply_tokens_per_s": min(rates),
        "fairness": min(rates) / statistics.fmean(rates) if any(rates) else 0.0,
        "ttft_s": ttfts, "ttft_max_s": max(ttfts), "ttft_median_s": statistics.median(ttfts),
        "tokens": [sum(k for _, k in r["stamps"]) for r in replies],
    }
    if len(engine) == len(replies):
        out["engine_reply_tokens_per_s"] = engine
        out["engine_fairness"] = min(engine) / statistics.fmean(engine)
        out["engine_ttft_s"] = [r["done"]["ttft_s"] for r in replies]
    return out


def join_figures(result: dict[str, Any]) -> dict[str, Any]:
    """While a long prompt joins: the streaming replies' longest gap between two
    arrivals that overlaps the join (from its request to its first token), against
    their median gap before it (their plain per-token time at that load)."""
    joiner = result["joiner"]
    begin = joiner["sent_s"]
    first = joiner["stamps"][0][0] if joiner["stamps"] else begin
    before: list[float] = []
    during: list[float] = []
    for stream in result["streams"]:
        times = [t for t, _ in stream["stamps"]]
        for a, b in pairwise(times):
            if b <= begin:
                before.append(b - a)
            elif a < first:
                during.append(b - a)
    # The first gaps of each stream include its own prompt's evaluation: skip none
    # here, the median is robust to them.
    plain = statistics.median(before) if before else float("nan")
    longest = max(during) if during else float("nan")
    return {"streams": len(result["streams"]), "join_prompt_tokens": result["join_prompt_tokens"],
            "plain_gap_s": plain, "longest_gap_s": longest,
            "longest_over_plain": longest / plain if before and during else None,
            "joiner_ttft_s": first - begin, "gaps_during_join": len(during),
            "streams_ended_early": bool(result.get("streams_ended_early"))}


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}
