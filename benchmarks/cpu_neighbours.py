"""Does work on other cores slow CPU decoding down, when decoding leaves them free?

The app's screen takes about a tenth of one core while a reply streams. On a 2-core
machine that is the decode's core; on a many-core one it should cost nothing, and yet
on a 16-vCPU host the app decoded at 0.89x of ``kvchat ask`` with half the cores idle
(docs/tui.md). This runs ``kvchat ask`` alone, then beside a neighbour process on a
free core: one that only spins (its own core, no shared state), and one that renders
Markdown with Rich in a loop (Python like a screen update's, without pause), and one
that streams through a buffer larger than the caches (shared last-level cache and
memory bandwidth). If the spinner costs nothing and the streamer costs a lot, the screen's
cost there is the cache and memory it shares, not its core.

    .venv/bin/python benchmarks/cpu_neighbours.py --threads 8 --reps 3 --tokens 400
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from engine.store import Store

PROMPT = "Tell me about the history of the printing press."

NEIGHBOURS = {
    "none": None,
    "spin": "while True: pass",
    # Python rendering Markdown with Rich, as a screen update does, without pause.
    "render": ("import io\n"
               "from rich.console import Console\n"
               "from rich.markdown import Markdown\n"
               "text = '# Title\\n\\n' + 'Some *text* with `code` and words. ' * 400\n"
               "while True:\n"
               "    Console(file=io.StringIO(), width=100).print(Markdown(text))"),
    # 256 MiB, touched with a stride of one cache line, over and over.
    "stream": ("import numpy as np\n"
               "a = np.ones(32 * 1024 * 1024, dtype=np.float64)\n"
               "while True: a[::8] += 1.0"),
}


def ask_rate(args: argparse.Namespace) -> float:
    home = Path(tempfile.mkdtemp(prefix="kvchat-neighbours-"))
    lines = ["[model]", f"n_threads = {args.threads}", f"n_gpu_layers = {args.gpu_layers}"]
    if args.model:
        lines.append(f"path = {json.dumps(args.model)}")
    (home / "config.toml").write_text("\n".join(lines) + "\n")
    run_cli = "import sys; from tui.cli import main; sys.exit(main(sys.argv[1:]))"
    cmd = [sys.executable, "-c", run_cli, "ask", "--config", str(home / "config.toml"),
           "--route", "chat", "--ignore-eos", "--temp", "0", "--seed", "0",
           "--max-tokens", str(args.tokens), "--ctx", str(args.ctx),
           "--speculative", "off", PROMPT]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "KVCHAT_HOME": str(home)})
    with Store(home / "kvchat.db") as store:
        conv = store.list_conversations(limit=1)[0]
        stats = store.messages(conv.id)[-1].stats or {}
    return float(stats["tokens_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a GGUF (default: the bundled model)")
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    parser.add_argument("--gpu-layers", type=int, default=0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=400)
    parser.add_argument("--ctx", type=int, default=2048)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    rates: dict[str, list[float]] = {name: [] for name in NEIGHBOURS}
    for rep in range(args.reps):
        names = list(NEIGHBOURS)
        order = names[rep % len(names):] + names[:rep % len(names)]
        for name in order:
            code = NEIGHBOURS[name]
            neighbour = None if code is None else subprocess.Popen([sys.executable, "-c", code])
            try:
                time.sleep(0.5 if neighbour else 0)  # the neighbour is up and busy
                rate = ask_rate(args)
            finally:
                if neighbour is not None:
                    neighbour.kill()
                    neighbour.wait()
            rates[name].append(rate)
            print(f"rep {rep + 1} {name}: {rate:.1f} tok/s", file=sys.stderr)
    base = statistics.median(rates["none"])
    result = {"model": args.model or "bundled", "threads": args.threads,
              "gpu_layers": args.gpu_layers, "tokens": args.tokens,
              "cpu_count": os.cpu_count(), "runs": rates,
              "over_alone": {n: statistics.median(v) / base for n, v in rates.items()}}
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
