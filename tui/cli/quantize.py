"""``kvchat quantize``: a smaller GGUF of a model through llama.cpp's own quantizer,
with the planner's predicted size next to the size written."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from tui.cli import EXIT_OK

if TYPE_CHECKING:  # the engine is imported when the command runs, not for --help
    from engine.model.gguf_header import GGUFHeader
    from engine.quant.quantize import QuantizeResult
    from engine.quant.targets import Target

MiB = 1024**2


def add_quantize_parser(commands: argparse._SubParsersAction, positive: object) -> None:
    quantize = commands.add_parser(
        "quantize", help="write smaller quants of a GGUF (llama.cpp's quantizer)",
        description="Write quantized copies of a GGUF model with llama.cpp's own quantizer, "
                    "each named SOURCE-TYPE.gguf, showing the memory planner's predicted "
                    "size beside the size written. `kvchat quality` then measures what "
                    "each costs.")
    quantize.add_argument("source", metavar="SRC.gguf",
                          help="the model to quantize (a file, or a name `kvchat models` "
                               "lists)")
    quantize.add_argument("--to", required=True, metavar="TYPE[,TYPE...]",
                          help="quant types, e.g. Q4_K_M,Q5_K_M (Q8_0, Q6_K, Q5_K_M, Q5_K_S, "
                               "Q4_K_M, Q4_K_S, Q4_0, Q3_K_M, Q2_K, ...)")
    quantize.add_argument("-o", "--output", metavar="DIR",
                          help="folder for the files (default: the current folder)")
    quantize.add_argument("--force", action="store_true", help="replace files that exist")
    quantize.add_argument("--allow-requantize", action="store_true",
                          help="quantize a source that is already quantized (the losses add up)")
    quantize.add_argument("--dequantize-first", action="store_true",
                          help="for a quantized source: first write an F16 reference of it "
                               "and quantize that (losses are then measured against this "
                               "file, not the original weights)")
    quantize.add_argument("--threads", type=positive, metavar="N",
                          help="threads for llama.cpp (default: the usable cores)")
    quantize.add_argument("--config", metavar="PATH", help="config file ([models] dirs)")


def run_quantize(args: argparse.Namespace) -> int:
    from engine.errors import ConfigError
    from engine.model.gguf_header import read_gguf_header
    from engine.quant.targets import is_quantized, parse_targets
    from tui.cli.models import model_path
    from tui.config import load_app_config

    targets = parse_targets(args.to)
    dirs = load_app_config(Path(args.config) if args.config else None).models.dirs
    header = read_gguf_header(Path(model_path(args.source, dirs)))
    folder = Path(args.output or ".").expanduser()
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"-o {folder}: not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    if args.dequantize_first and is_quantized(header):
        header = _reference(header, folder, args.force)
    elif args.dequantize_first:
        print(f"{header.path.name} is not quantized: it is its own reference", file=sys.stderr)
    outputs = _checked_outputs(header, targets, folder, args)
    for target, out in outputs:
        result = _one(header, target, out, args)
        print(_result_line(result))
    return EXIT_OK


def _reference(header: GGUFHeader, folder: Path, force: bool) -> GGUFHeader:
    from engine.model.gguf_header import read_gguf_header
    from engine.model.quant_costs import quant_name
    from engine.quant.dequantize import reference_name, write_f16_reference
    from engine.quant.quantize import check_output

    out = folder / reference_name(header)
    if out.is_file() and not force and _same_reference(header, read_gguf_header(out)):
        print(f"using {out.name}, the F16 copy of {header.path.name} written before "
              "(--force writes it again)", file=sys.stderr)
        return read_gguf_header(out)
    check_output(out, force)
    print(f"writing {out.name}: an F16 copy of {header.path.name} ({quant_name(header)}). "
          f"What the quants below lose is measured against this file, not against the "
          "original training weights, which are not here.", file=sys.stderr)
    write_f16_reference(header, out, _progress(f"F16 from {quant_name(header)}"))
    _end_progress()
    written = read_gguf_header(out)
    print(f"F16      {out}  {written.file_bytes / MiB:.1f} MiB (reference)")
    return written


def _same_reference(source: GGUFHeader, written: GGUFHeader) -> bool:
    from engine.model.quant_costs import DEQUANTIZED_FROM, model_identity, quant_name

    return (quant_name(written) == "F16" and model_identity(written) == model_identity(source)
            and written.metadata.get(DEQUANTIZED_FROM) == quant_name(source))


def _checked_outputs(header: GGUFHeader, targets: list[Target], folder: Path,
                     args: argparse.Namespace) -> list[tuple[Target, Path]]:
    """Every refusal before any work: the output names, requantizing, the disk."""
    from engine.errors import ConfigError
    from engine.quant.quantize import check_disk, check_output, check_requantize, output_name
    from engine.quant.targets import predicted_bytes

    outputs = []
    for target in targets:
        out = folder / output_name(header, target.name)
        if out.resolve() == header.path.resolve():
            raise ConfigError(f"{out} is the source itself: choose another -o folder")
        check_output(out, args.force)
        check_requantize(header, target, args.allow_requantize)
        outputs.append((target, out))
    needed = [predicted_bytes(header, t) for t, _ in outputs]
    check_disk(folder, sum(n or header.file_bytes for n in needed), header.file_bytes)
    return outputs


def _one(header: GGUFHeader, target: Target, out: Path,
         args: argparse.Namespace) -> QuantizeResult:
    from engine.quant.quantize import quantize

    try:
        return quantize(header, target, out, allow_requantize=args.allow_requantize,
                        threads=args.threads, progress=_progress(target.name))
    finally:
        _end_progress()


_shown: list[int] = []


def _progress(label: str) -> Callable[[int, int, str], None]:
    """A one-line progress bar on a terminal; a line per quarter otherwise."""
    tty = sys.stderr.isatty()
    _shown.clear()

    def show(done: int, total: int, name: str) -> None:
        if tty:
            width = 24
            filled = width * done // max(total, 1)
            sys.stderr.write(f"\r{label:<8} [{'#' * filled}{'.' * (width - filled)}] "
                             f"{done}/{total} {name[:40]:<40}")
            sys.stderr.flush()
            _shown.append(1)
        elif done * 4 // max(total, 1) > (done - 1) * 4 // max(total, 1):
            print(f"{label}: {done}/{total} tensors", file=sys.stderr)
    return show


def _end_progress() -> None:
    if _shown:
        sys.stderr.write("\r" + " " * 100 + "\r")
        sys.stderr.flush()
        _shown.clear()


def _result_line(r: QuantizeResult) -> str:
    if r.predicted_bytes:
        off = r.file_bytes / r.predicted_bytes - 1
        predicted = f"predicted {r.predicted_bytes / MiB:.1f} MiB, written " \
                    f"{r.file_bytes / MiB:.1f} MiB ({off:+.1%})"
    else:
        predicted = f"written {r.file_bytes / MiB:.1f} MiB (no prediction for this model)"
    line = f"{r.target:<8} {r.path}  {predicted}, {r.bits_per_weight:.2f} bits/weight, " \
           f"{r.seconds:.1f} s"
    if r.fallback_note:
        line += (f"\n         note: {r.fallback_note} (rows that are not whole blocks of "
                 "the type get another one)")
    return line
