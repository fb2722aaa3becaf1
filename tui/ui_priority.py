"""Let decoding win the CPU from the app's own screen updates.

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
