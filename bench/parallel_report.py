"""``kvchat bench --parallel``'s outputs: table rows and a Markdown report, read from the
report dict ``bench.parallel.run_parallel`` returns (so the table, the JSON and the
Markdown cannot disagree)."""

from __future__ import annotations

from typing import Any

COLUMNS = ("N", "KV", "kvchat tok/s", "per reply (min)", "fairness", "TTFT max ms",
           "batched-bench tok/s", "kvchat / batched-bench", "server tok/s", "kvchat / server")
"""One row per N and engine KV layout, each beside llama-batched-bench laid out alike
(shared: its ``-kvu`` run; split: its default)."""
_LAYOUTS = (("kvchat", "shared", "batched_bench_kvu"), ("kvchat_split", "split", "batched_bench"))


def _med(figures: dict[str, Any] | None, key: str, fmt: str = "{:.1f}", scale: float = 1.0
         ) -> str:
    if not figures or key not in figures:
        return "-"
    return fmt.format(figures[key]["median"] * scale)


def table_rows(report: dict[str, Any]) -> list[tuple[str, ...]]:
    """One row per N: medians over the repetitions."""
    out = []
    for row in report["rows"]:
        r = row["ratios"]
        for engine, layout, anchor in _LAYOUTS:
            k = row.get(engine)
            if k is None:
                continue
            served = engine == "kvchat" or "kvchat" not in row  # the server beside one
            out.append((
                str(row["parallel"]), layout, _med(k, "aggregate_tokens_per_s"),
                f"{_med(k, 'mean_reply_tokens_per_s')} ({_med(k, 'min_reply_tokens_per_s')})",
                _med(k, "fairness", "{:.3f}"), _med(k, "ttft_max_s", "{:.0f}", 1e3),
                _med(row.get(anchor), "aggregate_tokens_per_s"),
                _med(r, f"{engine}_vs_{anchor}", "{:.3f}x"),
                _med(row.get("server") if served else None, "aggregate_tokens_per_s"),
                _med(r if served else None, "kvchat_vs_server", "{:.3f}x")))
    return out


def summary_lines(report: dict[str, Any]) -> list[str]:
    lines = []
    for row in report["rows"]:
        r = row["ratios"]
        if "kvchat_vs_batched_bench" in r:
            lines.append(f"N={row['parallel']}: shared KV against llama-batched-bench's "
                         f"default (split) {_med(row['batched_bench'], 'aggregate_tokens_per_s')}"
                         f" tok/s: {_med(r, 'kvchat_vs_batched_bench', '{:.3f}x')}")
        server = row.get("server")
        if server:
            lines.append(f"N={row['parallel']}: server per reply "
                         f"{_med(server, 'mean_reply_tokens_per_s')} tok/s, fairness "
                         f"{_med(server, 'fairness', '{:.3f}')}, TTFT max "
                         f"{_med(server, 'ttft_max_s', '{:.0f}', 1e3)} ms")
    join = report.get("join")
    if join:
        ratio = join["longest_over_plain"]
        lines.append(
            f"a {join['join_prompt_tokens']}-token prompt joining {join['streams']} streaming "
            f"replies: longest gap {join['longest_gap_s']['median'] * 1e3:.0f} ms against a "
            f"plain {join['plain_gap_s']['median'] * 1e3:.1f} ms per token ("
            + (f"{ratio['median']:.2f}x, max {ratio['max']:.2f}x" if ratio else "no gap seen")
            + f"); its first token after {join['joiner_ttft_s']['median']:.2f} s"
            + ("; a stream ended before the join was over" if join["streams_ended_early"]
               else ""))
    bw, c = report["bandwidth"], report["ceiling"]
    if c["steps_per_s"]:
        lines.append(f"copy bandwidth (read + write) CPU {bw['cpu_bytes_per_s'] / 1e9:.1f} GB/s"
                     + (f", GPU {bw['gpu_bytes_per_s'] / 1e9:.0f} GB/s"
                        if bw.get("gpu_bytes_per_s") else "")
                     + f": at most {c['steps_per_s']:.1f} steps/s (weights read once a step; "
                       "the aggregate bound is N times that, KV reads not counted)")
    return lines


def markdown(report: dict[str, Any]) -> str:
    model, s, run = report["model"], report["settings"], report["run"]
    head = [f"# kvchat bench --parallel: {model['name']}"
            + (f" ({model['shape']}, random weights)" if model["shape"] else ""), "",
            f"backend {s['backend']}, {s['n_gpu_layers']}/{s['n_layers'] + 1} layers on the "
            f"GPU, n_ctx {s['n_ctx']}, {s['n_threads']} threads, batch {s['n_batch']}/"
            f"{s['n_ubatch']}, flash attention {'on' if s['flash_attn'] else 'off'}; "
            f"{run['prompt_tokens']} prompt + {run['tokens']} tokens per reply, "
            f"{run['reps']} repetitions, fresh processes; medians.", "",
            "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    body = [f"| {' | '.join(row)} |" for row in table_rows(report)]
    return "\n".join(head + body + ["", *[f"- {line}" for line in summary_lines(report)]]) + "\n"
