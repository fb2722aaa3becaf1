"""Check the memory plan against llama.cpp on a GPU: synthesize, plan, load by plan,
read a long prompt and generate, then record planned vs measured memory.

Run through ``benchmarks/gpu_plan_check.sh`` on a machine with a CUDA build of
llama.cpp. Each case is ``SHAPE:QUANT@BUDGET`` (``auto`` = the GPU's free memory).
Writes one JSON file with every case and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

from engine.api import ChatMessage, ChatRequest
from engine.backends.local import LocalEngine
from engine.config import ModelConfig, SamplingConfig
from engine.model.devices import query_devices
from engine.model.memory.budget import process_rss
from engine.model.memory.shapes import parse_shape
from engine.model.memory.synth import write_synthetic

MiB = 2**20


def nvidia_smi_used() -> int | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,"
                              "nounits"], capture_output=True, text=True, timeout=30).stdout
        return int(out.split()[0]) * MiB
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


def gpu_used() -> int | None:
    for dev in query_devices():
        if dev.kind == "gpu" and dev.total_bytes:
            return dev.total_bytes - dev.free_bytes
    return None


def synth(spec: str, models: Path) -> tuple[Path, float]:
    shape, mix = parse_shape(spec)
    path = models / f"{shape.name}-{mix.name}.gguf"
    if path.exists():
        return path, 0.0
    started = time.perf_counter()
    last = [0.0]

    def progress(done: int, total: int) -> None:
        if time.perf_counter() - last[0] > 10 or done == total:
            last[0] = time.perf_counter()
            print(f"  synth {spec}: {done / 2**30:.1f} / {total / 2**30:.1f} GiB", flush=True)

    write_synthetic(shape, mix, path, progress=progress)
    return path, time.perf_counter() - started


async def run_case(case: str, args: argparse.Namespace) -> dict:
    spec, _, budget = case.partition("@")
    path, synth_s = synth(spec, args.models)
    base_used = gpu_used()
    config = ModelConfig(path=path, n_ctx=args.ctx,
                         memory_budget=None if budget in ("", "auto") else budget)
    sampling = SamplingConfig(temperature=0.0, max_tokens=args.tokens, seed=0)
    engine = LocalEngine(config, sampling)
    result: dict = {"case": case, "synth_s": round(synth_s, 1), "gpu_used_before": base_used}
    try:
        info = await engine.start()
        planned, loaded = engine.memory
        result.update(
            description=info.description, backend=info.backend, n_ctx=info.n_ctx,
            n_gpu_layers=info.n_gpu_layers, n_layers=info.n_layers, kv_type=info.kv_type,
            n_ubatch=info.n_ubatch, load_s=round(info.load_s, 1), verdict=planned.verdict,
            budget_bytes=planned.budget_bytes, planned=planned.buffers,
            measured=loaded.buffers, planned_total=planned.total_bytes,
            measured_total=loaded.total_bytes, gpu_used_after_load=loaded.gpu_used_bytes,
            rss_after_load=loaded.rss_bytes)
        prompt = " ".join(f"word{i % 97}" for i in range(args.prompt_words))
        done = None
        started = time.perf_counter()
        async for event in engine.chat(ChatRequest(
                messages=(ChatMessage(role="user", content=prompt),), ignore_eos=True)):
            if event.type in ("done", "error"):
                done = event
        result["generate_s"] = round(time.perf_counter() - started, 1)
        result["final"] = done.model_dump(exclude={"text"}) if done is not None else None
        result["gpu_used_after_generate"] = gpu_used()
        result["nvidia_smi_used_after_generate"] = nvidia_smi_used()
        result["rss_after_generate"] = process_rss()
    except Exception as exc:  # record the failure, keep going with the next case
        result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        await engine.close()
    return result


def table(results: list[dict]) -> str:
    lines = []
    for r in results:
        lines.append(f"== {r['case']}: {r.get('verdict', r.get('error'))}")
        if "measured" not in r:
            continue
        lines.append(f"   n_gpu_layers {r['n_gpu_layers']}/{r['n_layers'] + 1}, kv {r['kv_type']}, "
                     f"ubatch {r['n_ubatch']}, ctx {r['n_ctx']}")
        for key in sorted(set(r["planned"]) | set(r["measured"])):
            p, m = r["planned"].get(key, 0), r["measured"].get(key, 0)
            ratio = f"{m / p:.3f}" if p else "-"
            lines.append(f"   {key:22s} planned {p / MiB:10.1f} MiB  measured {m / MiB:10.1f} MiB"
                         f"  ratio {ratio}")
        lines.append(f"   {'total':22s} planned {r['planned_total'] / MiB:10.1f} MiB  measured "
                     f"{r['measured_total'] / MiB:10.1f} MiB  ratio "
                     f"{r['measured_total'] / r['planned_total']:.3f}")
        fin = r.get("final") or {}
        lines.append(f"   GPU used: before {_mib(r.get('gpu_used_before'))}, after load "
                     f"{_mib(r.get('gpu_used_after_load'))}, after generating "
                     f"{_mib(r.get('gpu_used_after_generate'))} (nvidia-smi "
                     f"{_mib(r.get('nvidia_smi_used_after_generate'))}); "
                     f"{fin.get('type')} {fin.get('finish_reason', fin.get('message'))}: "
                     f"{fin.get('prompt_tokens')} prompt + {fin.get('completion_tokens')} "
                     f"generated, {fin.get('tokens_per_s', 0):.1f} tok/s")
    return "\n".join(lines)


def _mib(n: int | None) -> str:
    return "?" if n is None else f"{n / MiB:.0f} MiB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("cases", nargs="+", help="SHAPE:QUANT@BUDGET, e.g. "
                        "llama-3.1-70b:Q4_K_M@36GiB")
    parser.add_argument("--models", type=Path, default=Path("/tmp/synth"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--ctx", type=int, default=8192)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--prompt-words", type=int, default=700)
    args = parser.parse_args()
    args.models.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    out_file = args.out / f"gpu_plan_check_{int(time.time())}.json"
    for case in args.cases:
        print(f"case {case}", flush=True)
        results.append(asyncio.run(run_case(case, args)))
        out_file.write_text(json.dumps(results, indent=1))
        print(table(results[-1:]), flush=True)
    print(table(results))
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
