"""Hostile model files against ``kvchat ask``, which loads the model in its own process:
a file that passes kvchat's checks but makes llama.cpp abort is loaded first in an
engine process (engine/backends/process/preflight.py), so the abort ends that process
and ``kvchat ask`` ends with one line and exit 2. A file that loaded once is not
loaded apart again until it changes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

from engine.backends.process.preflight import KNOWN_LOADS
from engine.model.gguf_header import read_gguf_header
from tests.conftest import run_kvchat
from tests.test_hostile_inputs import BOUND_S, one_line_error, smollm3_with_half_rope

ASSERTION = "GGML_ASSERT(n_embd_head == n_rot) failed at smollm3.cpp"


def test_ask_refuses_a_file_that_aborts_llama_cpp_in_one_line(
        default_path: Path, tmp_path: Path, kvchat_home: Path) -> None:
    odd = smollm3_with_half_rope(default_path, tmp_path / "smollm3-half-rope.gguf")
    read_gguf_header(odd)  # passes kvchat's checks: only llama.cpp's load finds it
    proc = run_kvchat("ask", "hi", "--model", str(odd), "--max-tokens", "2",
                      "--events", "jsonl", home=kvchat_home, timeout=BOUND_S)
    line = one_line_error(proc, code=2)
    assert f"cannot load {odd}: llama.cpp aborted while loading it ({ASSERTION}" in line
    assert "Inferior" not in proc.stdout + proc.stderr  # no debugger's dump
    error = json.loads(proc.stdout.splitlines()[-1])  # --events jsonl ends with its event
    assert error["type"] == "error" and error["code"] == "model_file"
    assert not (kvchat_home / KNOWN_LOADS).exists()  # never remembered as loading fine


def test_a_file_that_loaded_is_not_loaded_apart_again(default_path: Path, tmp_path: Path,
                                                      kvchat_home: Path) -> None:
    copy = shutil.copy(default_path, tmp_path / "copy.gguf")  # not the bundled file
    proc = run_kvchat("ask", "hi", "--model", str(copy), "--max-tokens", "2",
                      home=kvchat_home, timeout=BOUND_S)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    known = json.loads((kvchat_home / KNOWN_LOADS).read_text())
    assert len(known) == 1 and known[0].startswith(f"{Path(copy).resolve()}|")
    # Remembered loads are what decides: an aborting file listed as one that loaded is
    # loaded here directly, and the abort ends kvchat ask itself (what the check spares).
    odd = smollm3_with_half_rope(default_path, tmp_path / "smollm3-half-rope.gguf")
    settings = known[0].rsplit("|", 1)[1]  # the same options: the same load settings
    (kvchat_home / KNOWN_LOADS).write_text(json.dumps(
        [f"{odd.resolve()}|{odd.stat().st_size}|{odd.stat().st_mtime_ns}|{settings}"]))
    trusted = run_kvchat("ask", "hi", "--model", str(odd), "--max-tokens", "2",
                         home=kvchat_home, timeout=BOUND_S)
    assert trusted.returncode == -signal.SIGABRT, trusted.stderr
    # Once the file changes it is checked again.
    os.utime(odd, ns=(1, 1))
    again = run_kvchat("ask", "hi", "--model", str(odd), "--max-tokens", "2",
                       home=kvchat_home, timeout=BOUND_S)
    assert ASSERTION in one_line_error(again, code=2)
