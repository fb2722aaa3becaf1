"""Make a smaller GGUF of a model with llama.cpp's own quantizer.

Everything a person can get wrong is refused before llama.cpp starts, in one line:
a file that is not a GGUF or is cut short (the header reader checks it), a source
already quantized (requantizing cannot add back what the first rounding lost), an
output that exists, too little disk for the planner's predicted size. The file is
written under a temporary name in the output's folder (``.NAME.PID.part``) by a
child process (``child.py``) and renamed when llama.cpp reports success; Ctrl+C or a
failure kills the child and deletes the temporary file, so no half-written file ever
carries the final name.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from engine.config import usable_cores
from engine.errors import ConfigError, KvchatError
from engine.model.gguf_header import GGUFHeader, read_gguf_header
from engine.model.quant_costs import DEQUANTIZED_FROM, quant_name
from engine.quant.targets import Target, bits_per_weight, is_quantized, predicted_bytes

DISK_MARGIN = 64 * 1024 * 1024
"""Free space kept beyond the predicted size."""
_TENSOR_LINE = re.compile(r"^\[\s*(\d+)/\s*(\d+)\]\s+(\S+)")
_QUANT_SUFFIX = re.compile(
    r"[-._](?:f32|f16|bf16|q\d(?:_[a-z0-9]+)*|iq\d\w*)(?:-from-[a-z0-9_]+)?$", re.I)

Progress = Callable[[int, int, str], None]
"""Called with (tensors done, tensors in all, tensor name) as llama.cpp works."""


class QuantizeFailed(KvchatError):
    """llama.cpp's quantizer failed or was stopped; nothing was left behind."""


@dataclass(frozen=True)
class QuantizeResult:
    target: str
    path: Path
    predicted_bytes: int | None
    file_bytes: int
    bits_per_weight: float
    seconds: float
    fallback_note: str
    """llama.cpp's count of tensors whose rows do not fit the type's blocks."""


def output_name(header: GGUFHeader, target: str) -> str:
    """``SmolLM2-135M-Instruct.Q4_1.gguf`` -> ``SmolLM2-135M-Instruct-Q5_K_M.gguf``; from
    an F16 reference written of a quantized file, ``...-Q5_K_M-from-Q4_1.gguf``."""
    stem = _QUANT_SUFFIX.sub("", header.path.stem) or header.path.stem
    origin = header.metadata.get(DEQUANTIZED_FROM)
    return f"{stem}-{target}{f'-from-{origin}' if origin else ''}.gguf"


def check_requantize(header: GGUFHeader, target: Target, allow: bool) -> None:
    """A quantized source is refused unless ``allow``: what its rounding lost is gone."""
    if allow or not is_quantized(header):
        return
    have = quant_name(header)
    predicted = predicted_bytes(header, target)
    if target.name == have or (predicted is not None and predicted >= header.file_bytes):
        raise ConfigError(
            f"{header.path.name} is already {have}: requantizing {have} to {target.name} "
            "cannot add back what was lost (--allow-requantize to do it anyway, "
            "--dequantize-first for an F16 reference of this file)")
    raise ConfigError(
        f"{header.path.name} is already {have} ({bits_per_weight(header):.2f} bits per "
        f"weight): {target.name} would round it a second time (--allow-requantize to do "
        "it anyway, --dequantize-first to quantize an F16 copy of it)")


def check_output(out: Path, force: bool) -> None:
    if out.is_dir():
        raise ConfigError(f"{out} is a folder, not a file name")
    if out.exists() and not force:
        raise ConfigError(f"{out} exists (--force to replace it)")


def check_disk(folder: Path, needed: int | None, fallback: int) -> None:
    """Refuse before writing when the folder's free space is short of the prediction
    (the source's size where there is none)."""
    want = (needed or fallback) + DISK_MARGIN
    free = shutil.disk_usage(folder).free
    if free < want:
        raise ConfigError(f"not enough disk space in {folder}: {free / 2**20:.0f} MiB free, "
                          f"about {want / 2**20:.0f} MiB needed")


def quantize(header: GGUFHeader, target: Target, out: Path, *, allow_requantize: bool,
             threads: int | None = None, progress: Progress | None = None,
             ) -> QuantizeResult:
    """Write ``out`` from ``header``'s file. Checks are the caller's (``check_*``);
    raises QuantizeFailed with llama.cpp's complaint, or KeyboardInterrupt, with no
    file left at ``out`` nor at the temporary name."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.part")
    started = time.perf_counter()
    args = [sys.executable, "-m", "engine.quant.child", str(header.path), str(tmp),
            str(target.ftype), str(threads or usable_cores()), "1" if allow_requantize else "0"]
    complaints: list[str] = []
    try:
        with _stoppable(), subprocess.Popen(
                args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                env=_child_env(), stdin=subprocess.DEVNULL) as child:
            try:
                fallback = _follow(child, progress, complaints)
                code = child.wait()
            except BaseException:
                child.kill()
                child.wait()
                raise
        if code != 0 or not tmp.is_file():
            detail = "; ".join(complaints[-2:]) or f"exit status {code}"
            raise QuantizeFailed(f"llama.cpp could not quantize {header.path.name} to "
                                 f"{target.name}: {detail}")
        os.replace(tmp, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    written = read_gguf_header(out)
    return QuantizeResult(target.name, out, predicted_bytes(header, target), written.file_bytes,
                          bits_per_weight(written), time.perf_counter() - started, fallback)


def _follow(child: subprocess.Popen[str], progress: Progress | None,
            complaints: list[str]) -> str:
    """Read the child's log to its end: progress per tensor, errors kept, and the
    fallback count llama.cpp reports."""
    fallback = ""
    assert child.stdout is not None
    for line in child.stdout:
        line = line.rstrip()
        match = _TENSOR_LINE.match(line)
        if match and progress is not None:
            progress(int(match[1]), int(match[2]), match[3])
        elif "required fallback quantization" in line:
            fallback = line.split("WARNING:", 1)[-1].strip()
        elif "error" in line.lower() or "failed" in line.lower():
            complaints.append(line.split(": ", 1)[-1])
    return fallback


@contextlib.contextmanager
def _stoppable() -> Iterator[None]:
    """SIGTERM stops a quantization as Ctrl+C does (the temporary file is removed)."""
    def stop(_sig: int, _frame: object) -> None:
        raise KeyboardInterrupt
    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _child_env() -> dict[str, str]:
    # The child imports ``engine`` by name, from wherever this one was imported.
    root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{path}" if path else root}
