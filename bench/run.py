"""``kvchat bench``'s measurement loop: fresh processes, alternating, one run.

Order per repetition: llama-bench (when given), raw llama-cpp-python, kvchat's
engine -- so drifting machine noise (other processes, clocks, heat) hits every path
alike -- and every comparison is a ratio of medians measured in this run.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.bandwidth import ceiling_tokens_per_s
from bench.config import BenchConfig, LoadSettings, Progress, Sample
from engine.errors import KvchatError

ROOT = Path(__file__).resolve().parent.parent


class BenchFailed(KvchatError):
    code = "bench_failed"


def child(kind: str, payload: dict[str, Any], timeout: float = 3600,
          module: str = "bench.probe") -> Any:
    """Run one measurement (``module``'s ``kind``) in a fresh interpreter; its last
    stdout line is JSON."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    proc = subprocess.run([sys.executable, "-m", module, kind, json.dumps(payload)],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchFailed(f"the {kind} measurement failed: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


def resolve_model(config: BenchConfig, progress: Progress) -> Path:
    """The file to measure: given, synthesized from a shape (reused when present), or
    the default model."""
    if config.model is not None:
        return Path(config.model).expanduser()
    if config.shape is None:
        from engine.model.bundled import default_model_path

        return default_model_path()
    from engine.model.memory.shapes import parse_shape
    from engine.model.memory.synth import write_synthetic

    shape, mix = parse_shape(config.shape)
    folder = config.models_dir or _cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{shape.name}-{mix.name}.gguf"
    if not path.exists():
        partial = path.with_suffix(".partial")
        try:
            write_synthetic(shape, mix, partial,
                            progress=lambda done, total: progress(
                                f"synthesize {config.shape}", done >> 20, total >> 20))
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        partial.rename(path)
    return path


def _cache_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("kvchat")) / "synth"


def llama_bench(binary: Path, settings: LoadSettings, prompt_tokens: int,
                tokens: int) -> dict[str, float]:
    """One ``llama-bench`` run (pp and tg, one repetition each): llama.cpp's own C++
    loop on the same file and settings, without sampling."""
    cmd = [str(binary), "-m", settings.model, "-p", str(prompt_tokens), "-n", str(tokens),
           "-b", str(settings.n_batch), "-ub", str(settings.n_ubatch),
           "-t", str(settings.n_threads), "-ngl", str(settings.n_gpu_layers),
           "-fa", "1" if settings.flash_attn else "0", "-r", "1", "-o", "json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise BenchFailed(f"llama-bench failed: {(proc.stderr.strip().splitlines() or [''])[-1]}")
    rows = json.loads(proc.stdout)
    out: dict[str, float] = {}
    for row in rows:
        key = "pp" if row.get("n_prompt", 0) and not row.get("n_gen", 0) else "tg"
        out[key] = float(row["avg_ts"])
    return out


def plan_settings(config: BenchConfig, model: Path,
                  progress: Progress) -> tuple[dict[str, Any], LoadSettings]:
    """The memory plan's resolution of ``config`` for ``model`` (in a child: it reads
    the devices through llama.cpp), and the load settings every path gets."""
    from engine.config import usable_cores

    progress("plan", 0, 1)
    planned = child("plan", {"model": str(model), "n_ctx": config.n_ctx,
                             "n_threads": config.n_threads or usable_cores(),
                             "n_batch": config.n_batch, "n_ubatch": config.n_ubatch,
                             "n_gpu_layers": config.n_gpu_layers,
                             "budget": config.memory_budget, "flash_attn": config.flash_attn})
    progress("plan", 1, 1)
    return planned, LoadSettings(**planned["settings"])


def run_bench(config: BenchConfig, progress: Progress) -> dict[str, Any]:
    """Measure everything ``config`` asks for; the report as a JSON-able dict."""
    model = resolve_model(config, progress)
    planned, settings = plan_settings(config, model, progress)
    payload = {"settings": asdict(settings), "prompt_tokens": config.prompt_tokens,
               "tokens": config.tokens}
    # llama-bench last: it reads the prompt length the first raw run reports.
    paths = ["raw", "engine"] + (["llama-bench"] if config.llama_bench else [])
    samples: dict[str, list[dict[str, Any]]] = {p: [] for p in paths}
    steps, step = config.reps * len(paths), 0
    for rep in range(config.reps):
        for path in paths:
            progress(f"rep {rep + 1}/{config.reps}: {path}", step, steps)
            if path == "llama-bench":
                assert config.llama_bench is not None
                prompt_n = samples["raw"][0]["prompt_tokens"]
                samples[path].append(llama_bench(Path(config.llama_bench), settings, prompt_n,
                                                 config.tokens))
            else:
                samples[path].append(child(path, payload))
            step += 1
    progress("measured", steps, steps)
    profile = None
    if config.profile:
        progress("profile", 0, 1)
        profile = child("profile", payload)
        progress("profile", 1, 1)
    progress("bandwidth", 0, 1)
    bw = child("bandwidth", {"on_gpu": planned["gpu_bytes_per_token"] > 0,
                              "n_bytes": config.bandwidth_bytes})
    progress("bandwidth", 1, 1)
    report = _report(config, model, planned, settings, samples, profile, bw)
    for name in config.extras:
        progress(name, 0, 1)
        report.setdefault("extras", {})[name] = _extra(name, config)
        progress(name, 1, 1)
    return report


def _report(config: BenchConfig, model: Path, planned: dict[str, Any], settings: LoadSettings,
            samples: dict[str, list[dict[str, Any]]], profile: dict[str, Any] | None,
            bw: dict[str, Any]) -> dict[str, Any]:
    raw = [Sample(**s) for s in samples["raw"]]
    eng = [Sample(**s) for s in samples["engine"]]
    if {s.prompt_tokens for s in raw} != {s.prompt_tokens for s in eng}:
        raise BenchFailed("raw and engine saw different prompts: "
                          f"{raw[0].prompt_tokens} vs {eng[0].prompt_tokens} tokens")

    def figures(rows: list[Sample]) -> dict[str, Any]:
        return {"decode_tokens_per_s": summary([s.decode_tokens_per_s for s in rows]),
                "prompt_tokens_per_s": summary([s.prompt_tokens_per_s for s in rows]),
                "ttft_s": summary([s.ttft_s for s in rows]),
                "rss_bytes": max((s.rss_bytes or 0) for s in rows),
                "gpu_used_bytes": max((s.gpu_used_bytes or 0) for s in rows) or None}

    paths: dict[str, Any] = {"raw": figures(raw), "engine": figures(eng)}
    paths["engine"]["consumer_tokens_per_s"] = summary(
        [s.extra["consumer_tokens_per_s"] for s in eng])
    # Per-repetition ratios: each pair ran back to back, so it shares the machine's state.
    ratios = {
        "engine_vs_raw_decode": summary([e.decode_tokens_per_s / r.decode_tokens_per_s
                                         for e, r in zip(eng, raw, strict=True)]),
        "engine_vs_raw_prompt": summary([e.prompt_tokens_per_s / r.prompt_tokens_per_s
                                         for e, r in zip(eng, raw, strict=True)]),
        "engine_vs_raw_ttft": summary([e.ttft_s / r.ttft_s
                                       for e, r in zip(eng, raw, strict=True)]),
    }
    if "llama-bench" in samples:
        lb = samples["llama-bench"]
        paths["llama-bench"] = {
            "decode_tokens_per_s": summary([s["tg"] for s in lb]),
            "prompt_tokens_per_s": summary([s["pp"] for s in lb])}
        ratios["engine_vs_llama_bench_decode"] = summary(
            [e.decode_tokens_per_s / s["tg"] for e, s in zip(eng, lb, strict=True)])
        ratios["raw_vs_llama_bench_decode"] = summary(
            [r.decode_tokens_per_s / s["tg"] for r, s in zip(raw, lb, strict=True)])
    gpu_bw, cpu_bw = bw.get("gpu_bytes_per_s"), bw["cpu_bytes_per_s"]
    gpu_bytes, cpu_bytes = planned["gpu_bytes_per_token"], planned["cpu_bytes_per_token"]
    ceiling = ceiling_tokens_per_s(gpu_bytes, cpu_bytes, gpu_bw, cpu_bw) \
        if gpu_bw or not gpu_bytes else None
    fractions = {p: paths[p]["decode_tokens_per_s"]["median"] / ceiling for p in paths} \
        if ceiling else {}
    return {
        "model": {"path": str(model), "name": planned["name"], "shape": config.shape,
                  "file_bytes": planned["file_bytes"]},
        "settings": asdict(settings),
        "run": {"tokens": config.tokens, "prompt_tokens": raw[0].prompt_tokens,
                "reps": config.reps, "greedy": True, "eos": "banned (native logit bias)"},
        "paths": paths, "ratios": ratios,
        "memory": {"planned_bytes": settings.planned_bytes, "plan": settings.verdict,
                   "measured_rss_bytes": paths["engine"]["rss_bytes"],
                   "measured_gpu_used_bytes": paths["engine"]["gpu_used_bytes"]},
        "bandwidth": {"cpu_bytes_per_s": cpu_bw, "gpu_bytes_per_s": gpu_bw,
                      "gpu_name": bw.get("gpu_name"), "measured_by": "copy, read + write"},
        "ceiling": {"gpu_bytes_per_token": gpu_bytes, "cpu_bytes_per_token": cpu_bytes,
                    "counted": planned["counted"], "tokens_per_s": ceiling,
                    "fraction": fractions},
        "profile": profile["extra"] if profile else None,
    }


def _extra(name: str, config: BenchConfig) -> dict[str, Any]:
    """A figure one of the repository's benchmarks measures, run as it is (its own
    fresh processes), its JSON taken as it writes it."""
    script = ROOT / "benchmarks" / {"speculative": "speculative.py",
                                    "eviction": "long_conversation.py",
                                    "tui": "tui_streaming.py"}[name]
    if not script.exists():
        return {"error": f"{script.name} is not here (a source checkout has it)"}
    reps = str(max(1, min(config.reps, 3)))
    args = {"speculative": ["--tokens", str(config.tokens), "--reps", reps],
            "eviction": ["--tokens", str(max(4000, 8 * config.tokens)), "--ctx", "1024",
                         "--reply", str(max(256, config.tokens))],
            "tui": ["--tokens", str(config.tokens), "--reps", reps, "--skip-long"]}[name]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        proc = subprocess.run([sys.executable, str(script), *args, "--json", str(out)],
                              capture_output=True, text=True, cwd=ROOT)
        if not out.exists():
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            return {"error": f"{script.name} failed: {tail}"}
        return json.loads(out.read_text())
