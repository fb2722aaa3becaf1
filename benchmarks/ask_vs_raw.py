"""Decode speed of kvchat's engine against raw llama-cpp-python: now ``kvchat bench``.

The measurement (fresh process per run, alternating raw and engine, same settings and
prompt, exactly N greedy tokens, the bandwidth ceiling) moved to ``bench.run``;
this script only forwards its arguments, kept so older notes still run.

    .venv/bin/python benchmarks/ask_vs_raw.py [MODEL] [--tokens 256] [--reps 5] [--json]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tui.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
