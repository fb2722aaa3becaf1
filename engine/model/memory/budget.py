"""How much memory a model may use: detected from the machine, or given.

Three kinds of pool, because they plan differently:

- ``gpu``: a discrete GPU (CUDA, ROCm, Vulkan on a card). The budget is the GPU's
  memory; layers that do not fit stay in system RAM and run on the CPU.
- ``unified``: Apple Silicon (Metal) or an integrated GPU. Weights, KV cache and
  compute buffers share one pool; the budget is what the GPU may use of it (Metal's
  ``recommendedMaxWorkingSetSize``, which ggml reports as the device's memory).
- ``cpu``: no GPU backend; the budget is the system's available memory.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from engine.config import parse_size
from engine.errors import ConfigError

PoolKind = Literal["gpu", "unified", "cpu"]


@dataclass(frozen=True)
class Budget:
    kind: PoolKind
    device: str
    """llama.cpp's device name (``CUDA0``, ``Metal``) or ``CPU``."""
    total_bytes: int
    """What the plan may use."""
    source: str
    """``detected`` (and from what) or ``given``."""
    system_bytes: int
    """System memory available, for the layers a GPU plan leaves on the CPU."""


def system_memory() -> tuple[int, int]:
    """(available, total) bytes of system memory; (0, 0) when unknown."""
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        fields = {}
        for line in meminfo.read_text().splitlines():
            match = re.match(r"(\w+):\s+(\d+) kB", line)
            if match:
                fields[match.group(1)] = int(match.group(2)) * 1024
        total = fields.get("MemTotal", 0)
        return fields.get("MemAvailable", fields.get("MemFree", total)), total
    if sys.platform == "darwin":
        try:
            out = subprocess.run(["sysctl", "-n", "hw.memsize"], capture_output=True,
                                 text=True, timeout=5).stdout.strip()
            total = int(out)
        except (OSError, ValueError, subprocess.SubprocessError):
            return 0, 0
        return total, total
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0, 0
    return total, total


def process_rss() -> int | None:
    """Resident memory of this process in bytes (Linux, macOS); None when unknown."""
    status = Path("/proc/self/status")
    if status.exists():
        match = re.search(r"VmRSS:\s+(\d+) kB", status.read_text())
        return int(match.group(1)) * 1024 if match else None
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # peak, not current
    except (ImportError, OSError):
        return None


def detect_budget(given: str | None = None, kind: PoolKind | None = None) -> Budget:
    """The budget for planning. ``given`` (e.g. ``36GiB``) replaces the detected
    amount; ``kind`` replaces the detected kind of pool (to plan for another machine).
    Raises ConfigError for an unparseable size."""
    available, _total = system_memory()
    gpu = _first_gpu()
    if gpu is not None:
        name, backend, dev_kind, free, total = gpu
        detected_kind: PoolKind = "unified" if backend == "Metal" or dev_kind == "igpu" \
            else "gpu"
        amount, source = free, f"detected: {name} free memory of {total / 2**30:.1f} GiB"
        device = name
    else:
        detected_kind, amount, device = "cpu", available, "CPU"
        source = "detected: available system memory"
    if kind is not None and kind != detected_kind:
        if given is None:
            raise ConfigError(f"planning for a {kind} memory pool on this machine "
                              "needs --budget")
        detected_kind, device = kind, "CPU" if kind == "cpu" else "GPU"
    if given is not None:
        try:
            amount = parse_size(given)
        except ValueError as exc:
            raise ConfigError(f"budget: {exc}") from None
        source = "given"
    return Budget(detected_kind, device, amount, source, available)


def _first_gpu() -> tuple[str, str, str, int, int] | None:
    from engine.model.devices import list_devices  # loads llama.cpp only when detecting

    for dev in list_devices():
        if dev.kind in ("gpu", "igpu") and dev.total_bytes > 0:
            return dev.name, dev.backend, dev.kind, dev.free_bytes, dev.total_bytes
    return None


