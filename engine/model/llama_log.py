"""Route llama.cpp's log through Python instead of letting it write to the terminal.

llama-cpp-python silences the C library by redirecting file descriptors 1 and 2,
which would blank a running Textual screen; a log callback does not. The last lines
are kept so a failed load can say what llama.cpp complained about.
"""

from __future__ import annotations

import ctypes
import logging
import re
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import llama_cpp

log = logging.getLogger("kvchat.llama")
_recent: deque[str] = deque(maxlen=50)
_partial: list[str] = []
_installed: list[object] = []  # keeps the ctypes callback alive
_captures: list[list[str]] = []
_followers: list[Callable[[str], None]] = []
_BUFFER_LINE = re.compile(r"(\S+)\s+(model|KV|compute|output) buffer size =\s*([\d.]+) MiB")


def _on_log(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    piece = text.decode("utf-8", errors="replace")
    _partial.append(piece)
    if piece.endswith("\n"):
        line = "".join(_partial).rstrip()
        _partial.clear()
        if line:
            _recent.append(line)
            for lines in _captures:
                lines.append(line)
            for follower in _followers:
                follower(line)
            log.debug(line)


def install() -> None:
    """Install the callback once per process."""
    if _installed:
        return
    callback = llama_cpp.llama_log_callback(_on_log)
    _installed.append(callback)
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))


@contextmanager
def capture() -> Iterator[list[str]]:
    """Collect every log line written inside the block (the engine thread's load)."""
    lines: list[str] = []
    _captures.append(lines)
    try:
        yield lines
    finally:
        _captures.remove(lines)


@contextmanager
def follow(callback: Callable[[str], None]) -> Iterator[None]:
    """Call ``callback`` with every log line written inside the block, as it comes
    (a quantization's per-tensor lines are its progress)."""
    _followers.append(callback)
    try:
        yield
    finally:
        _followers.remove(callback)


def buffer_sizes(lines: list[str]) -> dict[str, int]:
    """Bytes llama.cpp allocated, from its log: ``{"model CPU_Mapped": ..., "KV CPU":
    ..., "compute CPU": ...}``; buffers of one kind and device are summed."""
    sizes: dict[str, int] = {}
    for line in lines:
        match = _BUFFER_LINE.search(line)
        if match:
            device, kind, mib = match.groups()
            key = f"{kind} {device}"
            sizes[key] = sizes.get(key, 0) + round(float(mib) * 1024 * 1024)
    return sizes


def recent_errors(limit: int = 3) -> str:
    """The last few lines that look like errors, joined for one message."""
    hits = [ln for ln in _recent if "error" in ln.lower() or "failed" in ln.lower()]
    return "; ".join(hits[-limit:])
