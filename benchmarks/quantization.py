"""The figures of docs/quantization.md: each bundled model dequantized to an F16
reference, requantized to six types, and every file measured against that reference.

Four steps, each short enough to run alone under the model lock (a 2-core machine
cannot run the code tasks of all eight files of Gemma in one go):

    .venv/bin/python benchmarks/quantization.py quantize smollm2
    .venv/bin/python benchmarks/quantization.py quality smollm2      # KL, PPL, top-1, tok/s
    .venv/bin/python benchmarks/quantization.py quality-code-text smollm2   # on Python source
    .venv/bin/python benchmarks/quantization.py code smollm2 F16 Q4_1 Q8_0   # some files
    .venv/bin/python benchmarks/quantization.py report smollm2       # JSON, chart, table

Files go to .artifacts/quants/MODEL/ (ignored by git); results to
benchmarks/results/quantization_MODEL_cpu2.json (``quality`` and ``code`` write their
parts, ``report`` joins them, records the costs for ``kvchat plan`` and draws the
chart). Models: smollm2 (the default) and gemma3-270m.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.model.bundled import bundled_model_path  # noqa: E402

TYPES = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K")
RESULTS = ROOT / "benchmarks" / "results"
KVCHAT = [str(Path(sys.executable).with_name("kvchat"))]


def files(model: str) -> dict[str, Path]:
    """Label -> file: the F16 reference, the bundled file, each requantized type."""
    folder = ROOT / ".artifacts" / "quants" / model
    bundled = bundled_model_path(model)
    ref = next(folder.glob("*-F16-from-*.gguf"), None)
    if ref is None:
        sys.exit(f"quantization: no F16 reference in {folder}: run the quantize step first")
    origin = ref.stem.rsplit("-from-", 1)[1]
    found = {"F16": ref, f"{origin} (bundled)": bundled}
    for t in TYPES:
        found[t] = next(folder.glob(f"*-{t}-from-*.gguf"))
    return found


def quantize(model: str) -> None:
    folder = ROOT / ".artifacts" / "quants" / model
    subprocess.run([*KVCHAT, "quantize", str(bundled_model_path(model)), "--dequantize-first",
                    "--to", ",".join(TYPES), "-o", str(folder)], check=True, cwd=ROOT)


def quality(model: str, code_text: bool = False) -> None:
    """The default prose; with ``code_text``, Python source instead: the standard
    library's textwrap.py of the interpreter running this (3.11.7 for the figures in
    the docs), as a text, not shipped with kvchat."""
    paths = list(files(model).values())
    extra = ["--text", textwrap.__file__] if code_text else []
    out = subprocess.run([*KVCHAT, "quality", *map(str, paths), *extra, "--json"],
                         check=True, cwd=ROOT, capture_output=True, text=True)
    report = json.loads(out.stdout)
    if code_text:
        report["text"]["source"] = f"Python {platform.python_version()} Lib/textwrap.py"
    _merge(model, {"quality_code_text" if code_text else "quality": report})


def code(model: str, labels: list[str]) -> None:
    from tui.cli.quality_code import code_results

    known = files(model)
    results = _load(model).get("code", {})
    for label in labels:
        key = label if label in known else next(
            (k for k in known if k.startswith(label + " ")), None)
        if key is None:
            sys.exit(f"quantization: no file {label!r} (known: {', '.join(known)})")
        rows = code_results(known[key], progress=lambda m: print(m, file=sys.stderr))
        results[known[key].name] = rows
        _merge(model, {"code": results})


def report(model: str) -> None:
    from bench.quality_chart import write_quality_chart
    from engine.quant.quality import ModelScore, QualityReport, record

    data = _load(model)
    q, code_rows = data["quality"], data.get("code", {})
    for score in (q["reference"], *q["candidates"]):
        rows = code_rows.get(score["name"])
        score["code"] = rows or []
        score["code_pass_rate"] = sum(r["passed"] for r in rows) / len(rows) if rows else None
    _merge(model, {"quality": q})
    write_quality_chart(q, RESULTS / f"quantization_{model}_cpu2.svg")
    rebuilt = QualityReport(**{**q, "reference": ModelScore(**q["reference"]),
                               "candidates": [ModelScore(**c) for c in q["candidates"]]})
    record(rebuilt)
    print(markdown(q))


def markdown(q: dict[str, Any]) -> str:
    ref = q["reference"]
    lines = ["| file | quant | MiB | KL mean | KL p99 | top-1 | PPL | ΔPPL | code | tok/s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for s in (ref, *q["candidates"]):
        code = "" if s.get("code_pass_rate") is None else \
            f"{round(s['code_pass_rate'] * len(s['code']))}/{len(s['code'])}"
        if s is ref:
            kl = p99 = top1 = dppl = "—"
        else:
            kl, p99 = f"{s['kl_mean']:.4f}", f"{s['kl_p99']:.3f}"
            top1, dppl = f"{s['top1']:.1%}", f"{s['ppl'] / ref['ppl'] - 1:+.1%}"
        lines.append(f"| {s['name']} | {s['quant']} | {s['file_bytes'] / 2**20:.1f} | {kl} | "
                     f"{p99} | {top1} | {s['ppl']:.2f} | {dppl} | {code} | "
                     f"{s['tokens_per_s']:.0f} |")
    return "\n".join(lines)


def _path(model: str) -> Path:
    return RESULTS / f"quantization_{model}_cpu2.json"


def _load(model: str) -> dict[str, Any]:
    path = _path(model)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _merge(model: str, part: dict[str, Any]) -> None:
    data = {**_load(model), **part}
    _path(model).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("quantize", "quality", "quality-code-text", "code",
                                        "report") \
            or argv[1] not in ("smollm2", "gemma3-270m"):
        print(__doc__, file=sys.stderr)
        return 2
    step, model = argv[0], argv[1]
    if step == "code":
        code(model, argv[2:] or list(files(model)))
    else:
        {"quantize": quantize, "quality": quality, "report": report,
         "quality-code-text": lambda m: quality(m, code_text=True)}[step](model)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
