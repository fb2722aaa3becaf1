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

from engine.config import KvchatConfig
from engine.memory_budget import usable_cores

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


SPARE_VERIFY_CORES = 8
"""From this many cores on, speculative verification batches also leave the screen's
core alone. A verification batch is a few rows of work for every weight, which the
last core speeds up by about 1/cores, while a thread that shares its core with the
screen holds every other thread up at each of the graph's barriers. On 16 cores (CPU
only, same runs) the app verifying on 15 ran at 0.89x of ``kvchat ask``, on all 16 at
0.67x; on 4 cores 0.78x and 0.80x (no gain); on 2, one verifying thread halved the
speed of those batches (docs/tui.md)."""


def spare_a_core(config: KvchatConfig, cores: int | None = None) -> KvchatConfig:
    """The config the app's engine runs with: with ``ui.spare_core`` and no thread
    count set, decoding (and, on :data:`SPARE_VERIFY_CORES` cores or more, verifying
    drafts) leaves one core to the screen and prompt processing uses all of them."""
    model = config.model
    cores = cores or usable_cores()
    if not config.ui.spare_core or model.n_threads is not None or cores < 2:
        return config
    update: dict[str, int] = {"n_threads": cores - 1,
                              "n_threads_batch": model.n_threads_batch or cores}
    if cores >= SPARE_VERIFY_CORES and model.n_threads_verify is None:
        update["n_threads_verify"] = cores - 1
    return config.model_copy(update={"model": model.model_copy(update=update)})
