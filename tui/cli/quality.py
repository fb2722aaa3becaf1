"""``kvchat quality``: what each quant of a model costs against a reference of it, on
the same tokens; the results go into the table ``kvchat plan`` and the memory pane
read."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tui.cli import EXIT_OK

if TYPE_CHECKING:  # the engine is imported when the command runs, not for --help
    from engine.quant.quality import ModelScore, QualityReport

MiB = 1024**2


def add_quality_parser(commands: argparse._SubParsersAction, positive: object) -> None:
    quality = commands.add_parser(
        "quality", help="measure what quants cost against a reference (KL, perplexity)",
        description="Run the same text through a reference model and each candidate (its "
                    "quants) and compare: perplexity, KL divergence of the next-token "
                    "distributions (mean and 99th percentile), top-1 agreement, size and "
                    "decode speed; with --code, small programming tasks checked by tests. "
                    "Scored as llama.cpp's llama-perplexity scores: chunks of --ctx tokens, "
                    "the second half of each. Results are kept for `kvchat plan`.")
    quality.add_argument("reference", metavar="REF.gguf", help="the reference (e.g. F16)")
    quality.add_argument("candidates", metavar="CANDIDATE.gguf", nargs="+",
                         help="quants of the same model (same vocabulary)")
    quality.add_argument("--text", metavar="FILE",
                         help="UTF-8 text to score (default: the prose that ships with "
                              "kvchat, about 3,800 tokens)")
    quality.add_argument("--ctx", type=positive, metavar="N", default=512,
                         help="chunk size in tokens (default 512; the text needs two chunks)")
    quality.add_argument("--code", action="store_true",
                         help="also the pass rate on small programming tasks (slow: one "
                              "reply per task and model)")
    quality.add_argument("--code-limit", type=positive, metavar="N",
                         help="only the first N programming tasks")
    quality.add_argument("--threads", type=positive, metavar="N",
                         help="threads for llama.cpp (default: the usable cores)")
    quality.add_argument("--json", action="store_true", help="print the results as JSON")
    quality.add_argument("--out", metavar="DIR",
                         help="write quality.json and a chart (quality.svg) here")
    quality.add_argument("--config", metavar="PATH", help="config file ([models] dirs)")


def run_quality(args: argparse.Namespace) -> int:
    from engine.quant.quality import measure, record
    from tui.cli.models import model_path
    from tui.config import load_app_config

    dirs = load_app_config(Path(args.config) if args.config else None).models.dirs
    ref = Path(model_path(args.reference, dirs))
    candidates = [Path(model_path(c, dirs)) for c in args.candidates]
    name, text = _text(args.text)
    report = measure(ref, candidates, text, name, n_ctx=args.ctx, threads=args.threads,
                     progress=_say)
    if args.code:
        _code(report, args.code_limit)
    table, skipped = record(report)
    data = report.to_json()
    if args.out:
        _write_out(Path(args.out).expanduser(), data)
    if args.json:
        print(json.dumps(data, indent=1))
    else:
        sys.stdout.write(render(report))
    if table is not None:
        _say(f"recorded for `kvchat plan` in {table}")
    if skipped:
        _say(f"not recorded (another model than the reference): {', '.join(skipped)}")
    return EXIT_OK


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _text(path: str | None) -> tuple[str, str]:
    from engine.errors import ConfigError
    from engine.quant.quality import default_text

    if path is None:
        return default_text()
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"--text {file}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--text {file}: cannot read it as UTF-8 text ({exc})") from None
    if not text.strip():
        raise ConfigError(f"--text {file} is empty")
    return file.name, text


def _code(report: QualityReport, limit: int | None) -> None:
    from tui.cli.quality_code import code_results

    for score in (report.reference, *report.candidates):
        _say(f"code tasks: {score.name}")
        rows = code_results(Path(score.path), limit)
        score.code = rows
        score.code_pass_rate = sum(r["passed"] for r in rows) / len(rows) if rows else None


def _write_out(folder: Path, data: dict[str, Any]) -> None:
    from bench.quality_chart import write_quality_chart
    from engine.files.atomic import SHARED_FILE, atomic_write

    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / "quality.json", json.dumps(data, indent=1) + "\n", mode=SHARED_FILE)
    write_quality_chart(data, folder / "quality.svg")
    _say(f"wrote {folder / 'quality.json'} and {folder / 'quality.svg'}")


def _row(s: ModelScore, ref: ModelScore) -> list[str]:
    dppl = f"{s.ppl / ref.ppl - 1:+.1%}" if s.ppl and ref.ppl and s is not ref else ""
    code = "" if s.code_pass_rate is None else f"{s.code_pass_rate:.0%}"
    return [s.name, s.quant, f"{s.file_bytes / MiB:.1f}", f"{s.ppl:.3f}" if s.ppl else "-",
            dppl, "" if s.kl_mean is None else f"{s.kl_mean:.5f}",
            "" if s.kl_p99 is None else f"{s.kl_p99:.4f}",
            "" if s.top1 is None else f"{s.top1:.1%}",
            "" if s.tokens_per_s is None else f"{s.tokens_per_s:.0f}", code]


def render(r: QualityReport) -> str:
    t = r.text
    head = [f"reference: {r.reference.name} ({r.reference_label})",
            f"text: {t['name']}, {t['tokens']} tokens; {t['chunks']} chunks of {r.n_ctx}, "
            f"second half of each scored: {t['positions']} positions; {r.threads} threads", ""]
    cols = ["model", "quant", "MiB", "PPL", "ΔPPL", "KL mean", "KL p99", "top-1", "tok/s"]
    has_code = r.reference.code_pass_rate is not None
    rows = [_row(s, r.reference) for s in (r.reference, *r.candidates)]
    if has_code:
        cols.append("code")
    else:
        rows = [row[:-1] for row in rows]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in [cols, *rows]]
    return "\n".join(head + lines) + "\n"
