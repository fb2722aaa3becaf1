"""The decode ceiling: memory bandwidth over the bytes of weights read per token.

Each decoded token streams every weight matrix once (matrix-vector products), so a
decode cannot be faster than the memory system can deliver them. The bandwidth is a
measured copy (read + write counted, as copy benchmarks report it), not a data sheet.
"""

from __future__ import annotations

import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from typing import Any

import numpy as np

from engine.model.gguf_header import GGUFHeader

_LAYER = re.compile(r"blk\.(\d+)\.")


def bytes_read_per_token(header: GGUFHeader, n_gpu_layers: int) -> tuple[int, int, str]:
    """(bytes read on the GPU, bytes read on the CPU, what was counted) per token.

    Counted: every tensor except ``token_embd.weight``, of which a token reads one row
    (llama.cpp keeps it on the CPU and gathers rows) -- unless the embeddings are tied,
    when the output layer reads all of it. llama.cpp offloads the *last*
    ``n_gpu_layers`` layers, the output layer (output.weight, output_norm) counting as one.
    """
    n = header.n_layers
    first_gpu = n + 1 - n_gpu_layers  # layers first_gpu..n-1 and the output (index n)
    tied = not any(t.name == "output.weight" for t in header.tensors)
    gpu = cpu = 0
    for t in header.tensors:
        if t.name == "token_embd.weight" and not tied:
            continue
        match = _LAYER.match(t.name)
        index = int(match.group(1)) if match else n  # non-layer tensors: the output layer
        if t.name == "token_embd.weight":
            index = n  # tied: read in full by the output layer
        if n_gpu_layers > 0 and index >= first_gpu:
            gpu += t.n_bytes
        else:
            cpu += t.n_bytes
    counted = ("all tensors" + ("" if tied else " except token_embd.weight (one row read "
                                "per token)") + (", token_embd.weight counted as the tied "
                                                 "output matrix" if tied else ""))
    return gpu, cpu, counted


def ceiling_tokens_per_s(gpu_bytes: int, cpu_bytes: int, gpu_bw: float | None,
                         cpu_bw: float) -> float:
    """Tokens/s if every byte moved at the measured bandwidth of its device, one
    device after the other (a split model's layers run in sequence)."""
    seconds = cpu_bytes / cpu_bw
    if gpu_bytes:
        if not gpu_bw:
            raise ValueError("GPU bytes without a GPU bandwidth")
        seconds += gpu_bytes / gpu_bw
    return 1.0 / seconds if seconds else 0.0


def cpu_copy_bandwidth(n_bytes: int = 1 << 30, reps: int = 5,
                       threads: int | None = None) -> float:
    """Best-of-``reps`` copy of ``n_bytes``, in bytes/s counting read + write, split
    over ``threads`` threads (default: one per core). One core cannot saturate a
    server's memory system (an H100 host's 16 cores: 25.6 GB/s from one thread), and
    llama.cpp decodes with all of them, so the ceiling must too. numpy releases the
    GIL while it copies, so Python threads run the slices in parallel."""
    threads = max(1, threads or os.cpu_count() or 1)
    src = np.ones(n_bytes // 8, dtype=np.float64)
    dst = np.zeros_like(src)  # written once here so the first timed copy has no page faults
    bounds = np.linspace(0, len(src), threads + 1, dtype=np.int64)
    slices = [slice(int(a), int(b)) for a, b in pairwise(bounds)]
    best = float("inf")
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for _ in range(reps):
            start = time.perf_counter()
            list(pool.map(lambda part: np.copyto(dst[part], src[part]), slices))
            best = min(best, time.perf_counter() - start)
    return 2 * n_bytes / best


def cuda_copy_bandwidth(n_bytes: int = 2 << 30, reps: int = 10) -> dict[str, Any]:
    """Device-to-device copy on the first CUDA device with torch (read + write), best
    of ``reps``; empty when torch or CUDA is missing (the ceiling is then unknown)."""
    try:
        import torch
    except ImportError:
        return {}
    if not torch.cuda.is_available():
        return {}
    src = torch.empty(n_bytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)  # first touch, kernel load
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    name = torch.cuda.get_device_name(0)
    del src, dst
    torch.cuda.empty_cache()
    return {"gpu_bytes_per_s": 2 * n_bytes / best, "gpu_name": name}
