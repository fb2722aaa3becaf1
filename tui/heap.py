"""Keep Python's garbage collector off the screen thread's back while replies stream.

The app's heap holds a few hundred thousand long-lived objects (Textual's DOM and
styles, pydantic models, the engine client) once the model is loaded. A full
collection walks all of them: on a 2-core machine one took 80 ms of the screen
thread's CPU in the middle of a reply, time the decode stood still for (its threads
share those cores). Freezing the heap once nothing is streaming moves every object
alive then out of the collector's sight; a larger first-generation threshold makes
the young collections rare (a reply's frames allocate thousands of short-lived strips
and segments, nearly all freed by reference counting). Measured over a 1024-token
reply of the bundled model on 2 cores: 109 ms of collections with Python's defaults,
24 ms with both (docs/tui.md).
"""

from __future__ import annotations

import gc

GEN0_THRESHOLD = 20_000
"""Allocations (less frees) of container objects between two young collections;
Python's default is 700."""


def tune_collector() -> None:
    """Process-wide: the app's thresholds (the ``kvchat`` command only)."""
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)


def settle_heap() -> None:
    """Collect what is garbage now, then freeze the rest (the model has loaded, a reply
    has ended): later collections only look at what was allocated since."""
    gc.collect()
    gc.freeze()
