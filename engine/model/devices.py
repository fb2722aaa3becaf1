"""Which compute devices llama.cpp registered (CPU, CUDA, Metal, ...) and their memory.

llama-cpp-python binds llama.h but not ggml's device registry, so the registry is
read through ctypes from the ggml library that libllama already loaded.
"""

from __future__ import annotations

import ctypes
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import llama_cpp
from llama_cpp import llama_cpp as llama_lib

_DEVICE_TYPES = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel", 4: "meta"}


@dataclass(frozen=True)
class Device:
    name: str
    """Device name, e.g. ``CPU``, ``CUDA0``, ``Metal``."""
    backend: str
    """Backend registry name, e.g. ``CPU``, ``CUDA``, ``Metal``."""
    kind: str
    """cpu, gpu, igpu (integrated, shares host memory) or accel."""
    description: str
    free_bytes: int
    total_bytes: int


def _ggml_library() -> ctypes.CDLL | None:
    lib_path = Path(llama_lib._lib._name).parent
    suffix = {"darwin": ".dylib", "win32": ".dll"}.get(sys.platform, ".so")
    for name in (f"libggml{suffix}", f"ggml{suffix}"):
        candidate = lib_path / name
        if candidate.exists():
            try:
                return ctypes.CDLL(str(candidate))
            except OSError:
                return None
    return None


@cache
def list_devices() -> tuple[Device, ...]:
    """Devices llama.cpp can use, GPUs first; empty if the registry is unreachable.
    Read once: the free memory is as it was at the first call (see query_devices)."""
    return query_devices()


def query_devices() -> tuple[Device, ...]:
    """Like :func:`list_devices`, read now (free memory changes as models load)."""
    lib = _ggml_library()
    if lib is None:
        return ()
    try:
        lib.ggml_backend_dev_count.restype = ctypes.c_size_t
        lib.ggml_backend_dev_get.restype = ctypes.c_void_p
        lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
        for fn in ("ggml_backend_dev_name", "ggml_backend_dev_description"):
            getattr(lib, fn).restype = ctypes.c_char_p
            getattr(lib, fn).argtypes = [ctypes.c_void_p]
        lib.ggml_backend_dev_type.restype = ctypes.c_int
        lib.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
        lib.ggml_backend_dev_backend_reg.restype = ctypes.c_void_p
        lib.ggml_backend_dev_backend_reg.argtypes = [ctypes.c_void_p]
        lib.ggml_backend_reg_name.restype = ctypes.c_char_p
        lib.ggml_backend_reg_name.argtypes = [ctypes.c_void_p]
        lib.ggml_backend_dev_memory.argtypes = [
            ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)]
    except AttributeError:
        return ()
    llama_cpp.llama_backend_init()
    devices = []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        devices.append(Device(
            name=(lib.ggml_backend_dev_name(dev) or b"?").decode(),
            backend=(lib.ggml_backend_reg_name(lib.ggml_backend_dev_backend_reg(dev))
                     or b"?").decode(),
            kind=_DEVICE_TYPES.get(lib.ggml_backend_dev_type(dev), "unknown"),
            description=(lib.ggml_backend_dev_description(dev) or b"").decode(),
            free_bytes=free.value,
            total_bytes=total.value,
        ))
    devices.sort(key=lambda d: d.kind not in ("gpu", "igpu"))
    return tuple(devices)


def compute_backend(n_gpu_layers: int) -> str:
    """The backend doing the work: the first GPU's when layers are offloaded, else CPU."""
    gpus = [d for d in list_devices() if d.kind in ("gpu", "igpu")]
    if gpus and n_gpu_layers != 0:
        return gpus[0].backend
    return "CPU"

