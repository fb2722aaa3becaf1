"""``kvchat plan`` and ``kvchat synth`` from the command line: output, exit codes, errors."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from engine.model.memory.planner import MemoryPlan
from tests.conftest import run_kvchat


def no_traceback(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout


def test_plan_70b_in_36_gib(kvchat_home: Path) -> None:
    proc = run_kvchat("plan", "--shape", "llama-3.1-70b:Q4_K_M", "--budget", "36GiB",
                      "--ctx", "8192", "--memory", "unified", home=kvchat_home)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "DOES NOT FIT" in out and "39.59 GiB" in out and "KV cache 2.50 GiB" in out
    assert "a Q2_K file" in out and "fits" in out


def test_plan_json_is_the_pydantic_plan(kvchat_home: Path) -> None:
    proc = run_kvchat("plan", "--shape", "llama-3.1-70b:Q4_K_M", "--budget", "36GiB",
                      "--memory", "gpu", "--ctx", "8192", "--json", home=kvchat_home)
    assert proc.returncode == 0, proc.stderr
    plan = MemoryPlan.model_validate(json.loads(proc.stdout))
    assert plan.n_gpu_layers == 65 and plan.kv_bytes_per_token["f16"] == 327_680


def test_plan_of_the_bundled_model(kvchat_home: Path) -> None:
    proc = run_kvchat("plan", "--ctx", "65536", home=kvchat_home)
    assert proc.returncode == 0, proc.stderr
    assert "Smollm2 135M" in proc.stdout and "FITS" in proc.stdout
    assert "warning: context 65536 is larger than the 8192 tokens" in proc.stdout


def test_plan_says_how_parallel_replies_share_the_cells(kvchat_home: Path) -> None:
    proc = run_kvchat("plan", "--ctx", "4096", "--parallel", "4", home=kvchat_home)
    assert proc.returncode == 0, proc.stderr
    row = next(line for line in proc.stdout.splitlines() if line.startswith("replies"))
    assert "4 at once share the 4096 cells (about 1024 each" in row
    alone = run_kvchat("plan", "--ctx", "4096", home=kvchat_home)
    assert not any(line.startswith("replies") for line in alone.stdout.splitlines())
    data = json.loads(run_kvchat("plan", "--parallel", "4", "--json", home=kvchat_home).stdout)
    assert data["parallel"] == 4


def test_plan_with_split_streams_gives_each_reply_its_padded_share(kvchat_home: Path) -> None:
    # llama.cpp pads each stream to 256 cells: 4096 / 3 = 1365 becomes 1536, 4608 in all.
    proc = run_kvchat("plan", "--ctx", "4096", "--parallel", "3", "--kv-layout", "split",
                      home=kvchat_home)
    assert proc.returncode == 0, proc.stderr
    row = next(line for line in proc.stdout.splitlines() if line.startswith("replies"))
    assert "3 at once, 1536 cells each" in row
    data = json.loads(run_kvchat("plan", "--ctx", "4096", "--parallel", "3", "--kv-layout",
                                 "split", "--json", home=kvchat_home).stdout)
    assert (data["n_ctx"], data["kv_layout"]) == (4608, "split")


def test_plan_bad_inputs(kvchat_home: Path, bad_files: dict[str, Path]) -> None:
    cases = [
        (["--shape", "llama-3.1-70b:Q4_K_M", "--budget", "lots"], "not a size: 'lots'"),
        (["--shape", "mystery-7b:Q4_K_M"], "unknown shape 'mystery-7b'"),
        ([str(bad_files["truncated"])], "truncated"),
        ([str(bad_files["text"])], "not a GGUF model file"),
        ([str(bad_files["missing"])], "not found"),
        (["--shape", "llama-3.1-8b:Q4_K_M", str(bad_files["text"])], "not both"),
        (["--shape", "llama-3.1-8b:Q4_K_M", "--memory", "gpu"], "needs --budget"),
    ]
    for args, message in cases:
        proc = run_kvchat("plan", *args, home=kvchat_home)
        no_traceback(proc)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.startswith("kvchat: error:") and message in proc.stderr, proc.stderr


def test_synth_cli(kvchat_home: Path, tmp_path: Path) -> None:
    out = tmp_path / "tiny.gguf"
    proc = run_kvchat("synth", "tiny-llama:Q4_K_M", "-o", str(out), home=kvchat_home)
    assert proc.returncode == 0, proc.stderr
    assert out.exists() and "wrote" in proc.stdout
    again = run_kvchat("synth", "tiny-llama:Q4_K_M", "-o", str(out), home=kvchat_home)
    assert again.returncode == 2 and "--force" in again.stderr
    bad = run_kvchat("synth", "tiny-llama:Q9", "-o", str(out), home=kvchat_home)
    assert bad.returncode == 2 and "unknown quant type" in bad.stderr
    no_traceback(bad)


def test_ask_prints_memory_events(kvchat_home: Path) -> None:
    proc = run_kvchat("ask", "--events", "jsonl", "--max-tokens", "2", "--temp", "0",
                      "--kv-type", "q8_0", "Hi", home=kvchat_home)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    memory = [e for e in events if e["type"] == "memory"]
    assert [m["stage"] for m in memory] == ["planned", "loaded"]
    loaded = next(e for e in events if e["type"] == "model_loaded")
    assert loaded["kv_type"] == "q8_0"
    ratio = memory[1]["total_bytes"] / memory[0]["total_bytes"]
    assert 0.9 <= ratio <= 1.1


@pytest.mark.parametrize("command", [[], ["ask", "hi"], ["serve"]])
def test_the_kv_layout_option_reaches_the_model_config(kvchat_home: Path,
                                                       command: list[str]) -> None:
    from tui.cli import build_parser
    from tui.cli.options import resolve_config

    args = build_parser().parse_args([*command, "--parallel", "3", "--kv-layout", "split"])
    model = resolve_config(args).model
    assert (model.parallel, model.kv_layout) == (3, "split")
