"""``kvchat bench``'s outputs: table rows, a Markdown report and a chart.

Everything here reads the report dict ``run_bench`` returns, so the terminal table, the
JSON and the Markdown cannot disagree.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from engine.files.atomic import SHARED_FILE, atomic_write

GiB = 1024**3
PATH_NAMES = {"llama-bench": "llama-bench (llama.cpp C++)",
              "raw": "raw llama-cpp-python", "engine": "kvchat engine"}


def _span(s: dict[str, float], fmt: str = "{:.1f}") -> str:
    return f"{fmt.format(s['median'])} [{fmt.format(s['min'])}-{fmt.format(s['max'])}]"


def table_rows(report: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(path, decode tok/s, prompt tok/s, TTFT ms, share of ceiling) per path."""
    rows = []
    fractions = report["ceiling"]["fraction"]
    for path, figures in report["paths"].items():
        ttft = figures.get("ttft_s")
        rows.append((
            PATH_NAMES.get(path, path), _span(figures["decode_tokens_per_s"]),
            _span(figures["prompt_tokens_per_s"], "{:.0f}"),
            _span({k: v * 1e3 for k, v in ttft.items() if k != "n"}, "{:.0f}") if ttft else "-",
            f"{fractions[path]:.0%}" if path in fractions else "-"))
    return rows


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The figures under the table: ratios, memory, bandwidth, ceiling, profile."""
    r, m, bw, c = report["ratios"], report["memory"], report["bandwidth"], report["ceiling"]
    lines = [f"engine / raw decode {_span(r['engine_vs_raw_decode'], '{:.3f}')}x, prompt "
             f"{_span(r['engine_vs_raw_prompt'], '{:.3f}')}x, TTFT "
             f"{_span(r['engine_vs_raw_ttft'], '{:.3f}')}x"]
    if "engine_vs_llama_bench_decode" in r:
        lines.append(f"engine / llama-bench decode "
                     f"{_span(r['engine_vs_llama_bench_decode'], '{:.3f}')}x; raw / llama-bench "
                     f"{_span(r['raw_vs_llama_bench_decode'], '{:.3f}')}x")
    planned = m["planned_bytes"]
    gpu = m["measured_gpu_used_bytes"]
    lines.append("memory: planned " + (f"{planned / GiB:.2f} GiB" if planned else "?")
                 + f"; measured RSS {m['measured_rss_bytes'] / GiB:.2f} GiB"
                 + (f", GPU in use {gpu / GiB:.2f} GiB" if gpu else ""))
    bws = [f"CPU {bw['cpu_bytes_per_s'] / 1e9:.1f} GB/s"]
    if bw.get("gpu_bytes_per_s"):
        bws.append(f"GPU {bw['gpu_bytes_per_s'] / 1e9:.0f} GB/s ({bw.get('gpu_name')})")
    read = c["gpu_bytes_per_token"] + c["cpu_bytes_per_token"]
    ceiling = f"{c['tokens_per_s']:.1f} tok/s" if c["tokens_per_s"] else "unknown"
    lines.append(f"copy bandwidth (read + write) {', '.join(bws)}; {read / GiB:.2f} GiB read "
                 f"per token -> decode ceiling {ceiling}")
    if report.get("profile"):
        p = report["profile"]
        lines.append(f"engine per token: llama_decode {p['decode_ms_per_token']:.2f} ms, "
                     f"sampler {p['sample_ms_per_token']:.3f} ms, the rest "
                     f"{p['other_ms_per_token']:.3f} ms (of {p['wall_ms_per_token']:.2f} ms)")
    for name, extra in (report.get("extras") or {}).items():
        lines.append(f"{name}: {extra_line(name, extra)}")
    return lines


def extra_line(name: str, extra: dict[str, Any]) -> str:
    if "error" in extra:
        return extra["error"]
    if name == "speculative":
        run = extra.get("settings", {})
        how = (f"{run['mode']}, temperature {run['temperature']:g}" if run
               else "prompt lookup")
        if run.get("batch_invariant") == "on":
            how += ", batch-invariant load"
        return f"({how}) " + "; ".join(
            f"{task} {v['ratio']:.2f}x (acceptance {v['acceptance']:.0%}, "
            f"{'identical' if v['identical'] else 'not identical'})"
            for task, v in extra.items() if "ratio" in v)
    if name == "tui":
        keys = extra.get("key_delay_ms", {}).get("app", {})
        return (f"the app decodes at {extra['over_ask']['app']:.3f}x of kvchat ask "
                f"({extra['tok_s']['app']['median']:.1f} vs {extra['tok_s']['ask']['median']:.1f}"
                f" tok/s); key press answered in {keys.get('median', float('nan')):.1f} ms "
                f"(median), {keys.get('p95', float('nan')):.1f} ms (p95)")
    return (f"{extra['evictions']} evictions, slowest {extra['eviction_cost_max_s'] * 1e3:.1f} "
            f"ms vs {extra['reevaluate_window_s'] * 1e3:.0f} ms to re-evaluate the window "
            f"({extra['slowest_eviction_vs_reevaluation']:.3f}x)")


def markdown(report: dict[str, Any], chart_name: str | None) -> str:
    model, s, run = report["model"], report["settings"], report["run"]
    head = [
        f"# kvchat bench: {model['name']}" + (f" ({model['shape']}, random weights)"
                                              if model["shape"] else ""),
        "",
        f"{model['path']} ({model['file_bytes'] / GiB:.2f} GiB), backend {s['backend']}, "
        f"{s['n_gpu_layers']}/{s['n_layers'] + 1} layers on the GPU, n_ctx {s['n_ctx']}, "
        f"{s['n_threads']} threads, batch {s['n_batch']}/{s['n_ubatch']}, KV {s['kv_type']}, "
        f"flash attention {'on' if s['flash_attn'] else 'off'}. {run['prompt_tokens']} prompt "
        f"tokens, {run['tokens']} decoded greedily (end of generation banned), "
        f"{run['reps']} repetitions, each in a fresh process, paths alternating; median "
        "[min-max].",
        "",
        "| path | decode tok/s | prompt tok/s | TTFT ms | of ceiling |",
        "|---|---|---|---|---|",
    ]
    body = [f"| {' | '.join(row)} |" for row in table_rows(report)]
    tail = ["", *[f"- {line}" for line in summary_lines(report)],
            f"- bytes read per token: {report['ceiling']['counted']}"]
    if chart_name:
        tail += ["", f"![decode tokens/s]({chart_name})"]
    return "\n".join(head + body + tail) + "\n"


def write_chart(report: dict[str, Any], path: Path) -> None:
    """Bars of median decode tok/s per path (min-max as error bars) against the
    bandwidth ceiling; SVG or PNG by the file's suffix."""
    import matplotlib

    matplotlib.use("Agg")  # no display: write the file only
    import matplotlib.pyplot as plt

    names, med, low, high = [], [], [], []
    for key, figures in report["paths"].items():
        d = figures["decode_tokens_per_s"]
        names.append(PATH_NAMES.get(key, key))
        med.append(d["median"])
        low.append(d["median"] - d["min"])
        high.append(d["max"] - d["median"])
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.bar(names, med, yerr=[low, high], capsize=4, color="#4c78a8")
    ceiling = report["ceiling"]["tokens_per_s"]
    if ceiling:
        ax.axhline(ceiling, color="#e45756", linestyle="--",
                   label=f"bandwidth ceiling {ceiling:.0f} tok/s")
        ax.legend(loc="lower right")
    ax.set_ylabel("decode tokens/s")
    ax.set_title(f"{report['model']['name']}: decode speed, median of {report['run']['reps']}")
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format=path.suffix.lstrip(".") or "svg")
    plt.close(fig)
    atomic_write(path, image.getvalue(), mode=SHARED_FILE)
