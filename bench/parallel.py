"""``kvchat bench --parallel 1,2,4,8``: kvchat's engine under load, against llama.cpp's
own ``llama-batched-bench`` and llama-cpp-python's server, in one run.

Per repetition: llama-batched-bench (every N in one process, as it is made to run),
then for each N a fresh process of kvchat's engine loaded with ``parallel = N``
answering N concurrent requests (``bench.parallel_probe``), then, when given,
llama-cpp-python's server in a fresh process answering the same requests. After the
repetitions, the join measurement (a long prompt joining N - 1 streaming replies),
repeated as often (in the shared layout: a 2,000-token prompt needs a whole context,
not a split stream's share). With ``kv_layouts`` both, each N runs once per layout,
each against llama-batched-bench laid out alike. Every figure is the median over
repetitions, and each ratio the median of per-repetition ratios (each pair ran in the
same repetition).
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.config import BenchConfig, LoadSettings, Progress, join_stream_tokens
from bench.parallel_stats import join_figures, run_figures, summary
from bench.run import BenchFailed, child, plan_settings, resolve_model

PROBE = "bench.parallel_probe"


def batched_bench(binary: Path, settings: LoadSettings, config: BenchConfig,
                  unified: bool = False) -> dict[int, dict[str, float]]:
    """One llama-batched-bench process over every N: {N: its row} (S_TG: aggregate
    decode tok/s, S_PP: prompt tok/s). Random prompt tokens, no sampling; by default
    each sequence gets its own n_ctx / N slice of the cache (llama.cpp's default),
    ``unified``: one cache shared by all, as kvchat's engine loads it."""
    cmd = [str(binary), "-m", settings.model, "-c", str(settings.n_ctx),
           "-b", str(max(settings.n_batch, 2048)), "-ub", str(settings.n_ubatch),
           "-npp", str(config.prompt_tokens), "-ntg", str(config.tokens),
           "-npl", ",".join(map(str, config.parallel)),
           "-t", str(settings.n_threads), "-tb", str(settings.n_threads),
           "-ngl", str(settings.n_gpu_layers), "-fa", "on" if settings.flash_attn else "off",
           "--output-format", "jsonl"] + (["-kvu"] if unified else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    rows = {}
    for line in (proc.stdout + proc.stderr).splitlines():
        if line.startswith('{"n_kv_max"'):
            row = json.loads(line)
            rows[int(row["pl"])] = {"aggregate_tokens_per_s": float(row["speed_tg"]),
                                    "prompt_tokens_per_s": float(row["speed_pp"]),
                                    "prompt_s": float(row["t_pp"]), "decode_s": float(row["t_tg"])}
    if proc.returncode != 0 or not rows:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchFailed(f"llama-batched-bench failed: {tail}")
    return rows


def _figures_only(run: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in run.items() if k not in ("replies", "prompts", "eog")}


def run_parallel(config: BenchConfig, progress: Progress) -> dict[str, Any]:
    """Measure everything ``config`` asks for under load; the report as a JSON-able dict."""
    model = resolve_model(config, progress)
    planned, settings = plan_settings(config, model, progress)
    payload = {"settings": asdict(settings), "prompt_tokens": config.prompt_tokens,
               "tokens": config.tokens}
    samples: dict[str, list[Any]] = {"batched_bench": [], "batched_bench_kvu": [],
                                     "server": [], "join": []}
    samples |= {engine_key(layout): [] for layout in config.kv_layouts}
    steps = config.reps * (len(config.parallel) * (len(config.kv_layouts)
                                                   + (1 if config.server_python else 0))
                           + (2 if config.batched_bench else 0) + (1 if config.join_tokens
                                                                  else 0))
    step = 0

    def stage(text: str) -> None:
        nonlocal step
        progress(text, step, steps)
        step += 1

    for rep in range(config.reps):
        tag = f"rep {rep + 1}/{config.reps}"
        if config.batched_bench:
            stage(f"{tag}: llama-batched-bench")
            samples["batched_bench"].append(batched_bench(config.batched_bench, settings, config))
            stage(f"{tag}: llama-batched-bench, unified KV")
            samples["batched_bench_kvu"].append(
                batched_bench(config.batched_bench, settings, config, unified=True))
        runs: dict[str, dict[int, Any]] = {layout: {} for layout in config.kv_layouts}
        served = {}
        for n in config.parallel:
            for layout in config.kv_layouts:
                stage(f"{tag}: kvchat, {n} at once, {layout} KV")
                run = child("concurrent", {**payload, "n": n, "kv_layout": layout},
                            module=PROBE)
                runs[layout][n] = {**run_figures(run["replies"]),
                                   "engine_stats": run["engine_stats"]}
            if config.server_python:
                from bench.parallel_server import measure

                stage(f"{tag}: llama-cpp-python server, {n} at once")
                served[n] = run_figures(measure(config.server_python, settings,
                                                run["prompts"], config.tokens, run["eog"]))
        for layout, by_n in runs.items():
            samples[engine_key(layout)].append(by_n)
        samples["server"].append(served)
        most = max(config.parallel)
        if config.join_tokens and most > 1:
            stage(f"{tag}: a {config.join_tokens}-token prompt joining {most - 1} replies")
            joined = child("join", {**payload, "tokens": join_stream_tokens(config), "n": most,
                                    "join_tokens": config.join_tokens}, module=PROBE)
            samples["join"].append(join_figures(joined))
    progress("measured", steps, steps)
    bw = child("bandwidth", {"on_gpu": planned["gpu_bytes_per_token"] > 0,
                             "n_bytes": config.bandwidth_bytes})
    return _report(config, model, planned, settings, samples, bw)


def engine_key(layout: str) -> str:
    """Where a KV layout's engine figures go in the report: ``kvchat`` (shared, the
    default) or ``kvchat_split``."""
    return "kvchat" if layout == "shared" else f"kvchat_{layout}"


def _row(n: int, samples: dict[str, list[Any]]) -> dict[str, Any]:
    """Medians over repetitions for one N, with the per-repetition ratios (each engine
    layout against both llama-batched-bench layouts)."""
    row: dict[str, Any] = {"parallel": n}
    ratios: dict[str, Any] = {}
    engines = [key for key in ("kvchat", "kvchat_split") if samples.get(key)]
    for key in ("batched_bench", "batched_bench_kvu"):
        rows = [rep[n] for rep in samples[key] if n in rep]
        if rows:
            row[key] = {"aggregate_tokens_per_s": summary(
                [r["aggregate_tokens_per_s"] for r in rows]),
                "prompt_tokens_per_s": summary([r["prompt_tokens_per_s"] for r in rows])}
        for engine in engines:
            runs = [rep[n] for rep in samples[engine]]
            row[engine] = _figures(runs)
            if rows:
                ratios[f"{engine}_vs_{key}"] = summary(
                    [k["aggregate_tokens_per_s"] / r["aggregate_tokens_per_s"]
                     for k, r in zip(runs, rows, strict=True)])
    runs = [rep[n] for rep in samples[engines[0]]]
    served = [rep[n] for rep in samples["server"] if n in rep]
    if served:
        row["server"] = _figures(served)
        ratios["kvchat_vs_server"] = summary(
            [k["aggregate_tokens_per_s"] / s["aggregate_tokens_per_s"]
             for k, s in zip(runs, served, strict=True)])
    row["ratios"] = ratios
    return row


def _figures(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ["aggregate_tokens_per_s", "mean_reply_tokens_per_s", "min_reply_tokens_per_s",
            "fairness", "ttft_max_s", "ttft_median_s"]
    if all("engine_fairness" in r for r in runs):
        keys.append("engine_fairness")
    return {k: summary([r[k] for r in runs]) for k in keys}


def _report(config: BenchConfig, model: Path, planned: dict[str, Any], settings: LoadSettings,
            samples: dict[str, list[Any]], bw: dict[str, Any]) -> dict[str, Any]:
    from bench.bandwidth import ceiling_tokens_per_s

    gpu_bw, cpu_bw = bw.get("gpu_bytes_per_s"), bw["cpu_bytes_per_s"]
    gpu_bytes, cpu_bytes = planned["gpu_bytes_per_token"], planned["cpu_bytes_per_token"]
    steps = ceiling_tokens_per_s(gpu_bytes, cpu_bytes, gpu_bw, cpu_bw) \
        if gpu_bw or not gpu_bytes else None
    joins = samples["join"]
    return {
        "kind": "parallel",
        "model": {"path": str(model), "name": planned["name"], "shape": config.shape,
                  "file_bytes": planned["file_bytes"]},
        "settings": asdict(settings),
        "run": {"parallel": list(config.parallel), "prompt_tokens": config.prompt_tokens,
                "tokens": config.tokens, "reps": config.reps, "greedy": True,
                "eos": "banned", "join_tokens": config.join_tokens,
                "kv_layouts": list(config.kv_layouts), "join_kv_layout": "shared",
                "anchors": [name for name, on in (("llama-batched-bench", config.batched_bench),
                                                  ("llama-cpp-python server",
                                                   config.server_python)) if on]},
        "rows": [_row(n, samples) for n in config.parallel],
        "join": _join_summary(joins) if joins else None,
        "bandwidth": {"cpu_bytes_per_s": cpu_bw, "gpu_bytes_per_s": gpu_bw,
                      "gpu_name": bw.get("gpu_name"), "measured_by": "copy, read + write"},
        "ceiling": {"gpu_bytes_per_token": gpu_bytes, "cpu_bytes_per_token": cpu_bytes,
                    "steps_per_s": steps,
                    "note": "weights read once per step for all N rows: N x steps_per_s "
                            "bounds the aggregate (KV reads not counted)"},
        "samples": {**{key: [{str(n): _figures_only(r) for n, r in rep.items()}
                             for rep in samples[key]]
                       for key in ("kvchat", "kvchat_split") if key in samples},
                    "server": [{str(n): _figures_only(r) for n, r in rep.items()}
                               for rep in samples["server"]],
                    "batched_bench": [{str(n): r for n, r in rep.items()}
                                      for rep in samples["batched_bench"]],
                    "batched_bench_kvu": [{str(n): r for n, r in rep.items()}
                                          for rep in samples["batched_bench_kvu"]],
                    "join": joins},
    }


def _join_summary(joins: list[dict[str, Any]]) -> dict[str, Any]:
    ratios = [j["longest_over_plain"] for j in joins if j["longest_over_plain"] is not None]
    return {"streams": joins[0]["streams"], "join_prompt_tokens": joins[0]["join_prompt_tokens"],
            "plain_gap_s": summary([j["plain_gap_s"] for j in joins]),
            "longest_gap_s": summary([j["longest_gap_s"] for j in joins]),
            "longest_over_plain": summary(ratios) if ratios else None,
            "joiner_ttft_s": summary([j["joiner_ttft_s"] for j in joins]),
            "streams_ended_early": any(j["streams_ended_early"] for j in joins)}
