"""The process one quantization runs in: ``python -m engine.quant.child SRC OUT FTYPE
THREADS REQUANT``.

llama.cpp's quantizer is one C call that Python cannot interrupt, so it runs here,
where the parent can kill it (Ctrl+C) and delete what it wrote. llama.cpp's log comes
through kvchat's hook and goes to stdout a line at a time: the per-tensor lines are the
parent's progress. Exit status: llama.cpp's return code.
"""

from __future__ import annotations

import ctypes
import signal
import sys

import llama_cpp

from engine.model import llama_log


def _die_with_parent() -> None:
    # Linux: a killed parent takes this process with it rather than leaving it writing.
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main(argv: list[str]) -> int:
    src, out, ftype, threads, requant = argv
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what Ctrl+C does
    llama_log.install()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(ftype)
    params.nthread = int(threads)
    params.allow_requantize = requant == "1"
    with llama_log.follow(lambda line: print(line, flush=True)):
        return int(llama_cpp.llama_model_quantize(src.encode(), out.encode(),
                                                  ctypes.byref(params)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
