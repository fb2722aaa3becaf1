"""kvchat's quality figures against llama.cpp's ``llama-perplexity`` on the same files
and text. Run through benchmarks/quality_anchor.sh, which builds llama-perplexity from
the source vendored in the pinned llama-cpp-python and passes ``--perplexity BIN``.

llama-perplexity first runs the reference with ``--kl-divergence-base FILE`` (it saves
the reference's log-probabilities, 16 bits each), then each candidate with
``--kl-divergence``. Both sides use ``-c CTX -b CTX`` (one chunk per batch, as kvchat
evaluates), the same threads, and score the second half of every chunk. What still
differs: llama-perplexity stores the reference's log-probabilities as 16-bit steps over
the 16 nats below the top token and leaves tokens under exp(-16) out of the KL sum;
kvchat keeps float32 and sums the whole vocabulary.

    benchmarks/quality_anchor.sh REF.gguf CAND.gguf... [--ctx N] [--text FILE] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.config import usable_cores  # noqa: E402
from engine.quant.quality import DEFAULT_CTX, default_text, measure  # noqa: E402

PATTERNS = {
    "ppl_base": r"Final estimate: PPL = ([\d.]+)",
    "ppl": r"Mean PPL\(Q\)\s*:\s*([\d.]+)",
    "kl_mean": r"Mean\s+KLD:\s*([\d.]+)",
    "kl_p99": r"99\.0%\s+KLD:\s*([\d.]+)",
    "top1": r"Same top p:\s*([\d.]+)",
}


def run(binary: Path, model: Path, text: Path, ctx: int, threads: int, base: Path,
        kl: bool) -> str:
    args = [str(binary), "-m", str(model), "-f", str(text), "-c", str(ctx), "-b", str(ctx),
            "-t", str(threads), "--kl-divergence-base", str(base)]
    if kl:
        args.append("--kl-divergence")
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"quality_anchor: llama-perplexity failed on {model}:\n{proc.stderr[-2000:]}")
    return proc.stdout + proc.stderr


def parse(log: str) -> dict[str, float]:
    found = {}
    for key, pattern in PATTERNS.items():
        match = re.search(pattern, log)
        if match:
            found[key] = float(match[1]) / (100 if key == "top1" else 1)
    return found


def differences(ours: dict[str, Any], theirs: dict[str, float]) -> dict[str, float]:
    return {k: round(ours[k] / theirs[k] - 1, 6) for k in theirs
            if ours.get(k) is not None and theirs[k]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--perplexity", type=Path, required=True)
    parser.add_argument("reference", type=Path)
    parser.add_argument("candidates", type=Path, nargs="+")
    parser.add_argument("--ctx", type=int, default=DEFAULT_CTX)
    parser.add_argument("--text", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    threads = usable_cores()
    name, text = (args.text.name, args.text.read_text(encoding="utf-8")) if args.text \
        else default_text()
    rows = []
    with tempfile.TemporaryDirectory(prefix="quality-anchor-") as tmp:
        text_file = Path(tmp) / "text.txt"
        text_file.write_text(text, encoding="utf-8")
        base = Path(tmp) / "base.kld"
        reference = parse(run(args.perplexity, args.reference, text_file, args.ctx, threads,
                              base, kl=False))
        ours = measure(args.reference, args.candidates, text, name, n_ctx=args.ctx,
                       threads=threads)
        for path, score in zip(args.candidates, ours.candidates, strict=True):
            theirs = parse(run(args.perplexity, path, text_file, args.ctx, threads, base,
                               kl=True))
            mine = {"ppl": score.ppl, "kl_mean": score.kl_mean, "kl_p99": score.kl_p99,
                    "top1": score.top1}
            rows.append({"candidate": path.name, "llama_perplexity": theirs, "kvchat": mine,
                         "relative_difference": differences(mine, theirs)})
    report = {"reference": args.reference.name, "text": ours.text, "n_ctx": args.ctx,
              "threads": threads,
              "reference_ppl": {"llama_perplexity": reference.get("ppl_base"),
                                "kvchat": ours.reference.ppl},
              "candidates": rows}
    print(f"reference {args.reference.name}: PPL llama-perplexity "
          f"{reference.get('ppl_base')}, kvchat {ours.reference.ppl:.4f}")
    print(f"{'candidate':<44}{'figure':<9}{'llama-perplexity':>18}{'kvchat':>12}{'diff':>9}")
    for row in rows:
        for key, theirs_value in row["llama_perplexity"].items():
            diff = row["relative_difference"].get(key)
            print(f"{row['candidate'][:43]:<44}{key:<9}{theirs_value:>18.6f}"
                  f"{row['kvchat'][key]:>12.6f}{'' if diff is None else f'{diff:+.3%}':>9}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    worst = max((abs(v) for r in rows for k, v in r["relative_difference"].items()
                 if k in ("ppl", "kl_mean")), default=0.0)
    print(f"largest difference in perplexity or mean KL: {worst:.3%}")
    return 0 if worst <= 0.01 else 1


if __name__ == "__main__":
    sys.exit(main())
