"""Let decoding win the CPU, and the interpreter lock, from the app's screen updates.

On a machine with few cores, the app's main thread (layout and render, about a quarter
of a core while a reply streams) competes with llama.cpp's decode threads, and those
wait for each other at every step: whatever the UI takes, the decode loses. Giving the
UI thread a lower scheduling priority makes the kernel run it in the gaps instead; the
screen updates a little later, tokens come at the engine's speed. Linux applies a nice
value per thread, so this leaves the engine thread (started earlier, at model load)
and llama.cpp's workers as they are.
"""

from __future__ import annotations

import os
import sys
import threading

from engine.config import KvchatConfig, usable_cores
from engine.events import ModelLoaded
from tui.config import ui_settings

UI_NICE = 10


def yield_cpu_to_decoding(nice: int = UI_NICE) -> bool:
    """Lower the calling thread's priority by ``nice``; False where the platform has no
    per-thread priority (macOS, Windows) or refuses it."""
    if not sys.platform.startswith("linux") or not hasattr(os, "setpriority"):
        return False
    tid = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, current + nice))
    except OSError:
        return False
    return True


class GilHandover:
    """While the app runs, Python's thread switch interval is shortened (a process-wide
    setting, restored by :meth:`restore`). The engine thread runs a little Python
    between two decodes (the token's events, the next token's bookkeeping) and needs
    the interpreter lock for it; while the main thread lays out and renders a screen
    (tens of ms on two cores), the engine thread would wait up to the interval, 5 ms
    by default, with the decode idle, on every token that lands during an update."""

    def __init__(self) -> None:
        self._saved: float | None = None

    def shorten(self, interval_s: float) -> None:
        if self._saved is None:
            self._saved = sys.getswitchinterval()
        sys.setswitchinterval(interval_s)

    def restore(self) -> None:
        if self._saved is not None:
            sys.setswitchinterval(self._saved)
            self._saved = None


SPARE_CORE_FROM = 8
"""From this many cores on, the app's engine leaves one core to the screen, for one-token
decodes and speculative verification batches alike; below, it keeps them all.

A thread that shares its core with the screen holds every other decode thread up at
each of the graph's barriers, while the last of many cores adds little: on 16 cores (CPU
only, same runs) the app verifying on 15 ran at 0.89x of ``kvchat ask``, on all 16 at
0.67x. On few cores the last one is a large share: on 4, 0.78x sparing and 0.80x not; on
2, one decode thread ran at 0.92x of two, one verifying thread at half the speed, and
the screen's frames (one screen update each since they carry their gauges) cost less
than the core: 0.97x sharing both against 0.93x sparing one (docs/tui.md)."""


def spare_a_core(config: KvchatConfig, cores: int | None = None) -> KvchatConfig:
    """The config the app's engine runs with: with ``ui.spare_core``, no thread count
    set and :data:`SPARE_CORE_FROM` cores or more, decoding and verifying drafts leave
    one core to the screen, and prompt processing uses all of them."""
    model = config.model
    cores = cores or usable_cores()
    if not ui_settings(config).spare_core or model.n_threads is not None or cores < SPARE_CORE_FROM:
        return config
    update: dict[str, int] = {"n_threads": cores - 1,
                              "n_threads_batch": model.n_threads_batch or cores}
    if model.n_threads_verify is None:
        update["n_threads_verify"] = cores - 1
    return config.model_copy(update={"model": model.model_copy(update=update)})


def streams_as_source(config: KvchatConfig, info: ModelLoaded, cores: int | None = None) -> bool:
    """Should replies stream as highlighted source (``ui.stream_view``)? With ``auto``:
    when the model decodes on the CPU with a thread on every core the screen may run on
    (the config as :func:`spare_a_core` left it), so that the screen's work stops the
    decode; with a GPU, a remote server or a core left over, Markdown streams."""
    mode = ui_settings(config).stream_view
    if mode != "auto":
        return mode == "source"
    cores = cores or usable_cores()
    threads = config.model.n_threads
    on_cpu = info.backend == "CPU" and not info.n_gpu_layers
    return on_cpu and (threads is None or threads >= cores)
