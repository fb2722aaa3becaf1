"""``kvchat bench``: a real short run on the bundled model (structure only, never
speed), the files --out writes, bad input, and the bytes-per-token accounting."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pytest

from bench.bandwidth import bytes_read_per_token, ceiling_tokens_per_s
from engine.model.bundled import default_model_path
from engine.model.gguf_header import read_gguf_header
from engine.model.memory.shapes import parse_shape, shape_header
from tests.conftest import run_bench


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("bench")
    proc = run_bench("bench", "--quick", "--json", "--reps", "2", "--tokens", "6",
                  "--prompt-tokens", "40", "--ctx", "256", "--out", str(out), "--with", "tui")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), out


def test_quick_run_measures_both_anchors(quick_run: tuple[dict[str, Any], Path]) -> None:
    report, _ = quick_run
    raw, eng = report["paths"]["raw"], report["paths"]["engine"]
    for figures in (raw, eng):
        decode = figures["decode_tokens_per_s"]
        assert decode["n"] == 2
        assert 0 < decode["min"] <= decode["median"] <= decode["max"]
        assert figures["prompt_tokens_per_s"]["median"] > 0
        assert figures["ttft_s"]["median"] > 0
    assert "llama-bench" not in report["paths"]  # only with --llama-bench
    assert report["run"]["tokens"] == 6 and report["run"]["reps"] == 2
    assert 0 < report["run"]["prompt_tokens"] <= 40
    assert report["settings"]["backend"] == "CPU" or report["settings"]["n_gpu_layers"] > 0


def test_ratio_and_ceiling_come_from_the_measured_runs(
        quick_run: tuple[dict[str, Any], Path]) -> None:
    report, _ = quick_run
    raw = report["paths"]["raw"]["decode_tokens_per_s"]
    eng = report["paths"]["engine"]["decode_tokens_per_s"]
    ratio = report["ratios"]["engine_vs_raw_decode"]
    # Per-repetition ratios: their extremes bracket the ratio of the extremes' ends.
    assert eng["min"] / raw["max"] <= ratio["min"] <= ratio["max"] <= eng["max"] / raw["min"]
    ceiling = report["ceiling"]
    assert ceiling["tokens_per_s"] == pytest.approx(
        report["bandwidth"]["cpu_bytes_per_s"]
        / (ceiling["cpu_bytes_per_token"] + ceiling["gpu_bytes_per_token"]))
    assert ceiling["fraction"]["engine"] == pytest.approx(eng["median"] / ceiling["tokens_per_s"])
    assert report["memory"]["planned_bytes"] > 0
    assert report["memory"]["measured_rss_bytes"] > 0
    assert report["profile"] is None  # --quick skips the profile run


def test_out_writes_report_and_chart(quick_run: tuple[dict[str, Any], Path]) -> None:
    report, out = quick_run
    assert json.loads((out / "bench.json").read_text()) == report
    md = (out / "bench.md").read_text()
    assert md.startswith("# kvchat bench: ")
    assert "| raw llama-cpp-python |" in md and "| kvchat engine |" in md
    assert "![decode tokens/s](bench.svg)" in md
    svg = (out / "bench.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg


def test_with_tui_adds_the_app_against_ask(quick_run: tuple[dict[str, Any], Path]) -> None:
    # benchmarks/tui_streaming.py ran both faces on the bundled model, in fresh
    # processes, and its figures went into the report and its Markdown.
    report, out = quick_run
    tui = report["extras"]["tui"]
    assert "error" not in tui, tui.get("error")
    assert tui["tokens"] == 6 and tui["reps"] == 2
    assert len(tui["runs"]["ask"]) == len(tui["runs"]["app"]) == 2
    assert all(rate > 0 for rate in tui["runs"]["ask"] + tui["runs"]["app"])
    assert tui["over_ask"]["app"] == pytest.approx(
        tui["tok_s"]["app"]["median"] / tui["tok_s"]["ask"]["median"])
    # And each rep's own ratio, the faces of one rep having run back to back.
    paired = [a / b for a, b in zip(tui["runs"]["app"], tui["runs"]["ask"], strict=True)]
    assert tui["over_ask_paired"]["app"]["median"] == pytest.approx(statistics.median(paired))
    assert "tui: the app decodes at " in (out / "bench.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["/no/such/model.gguf"], "model file /no/such/model.gguf does not exist"),
    (["--shape", "llama-9b:Q4_K_M"], "unknown shape 'llama-9b'"),
    (["--shape", "llama-3.1-8b:Q9_X"], "unknown quant type 'Q9_X'"),
    (["--prompt-tokens", "4000", "--ctx", "1024"], "do not fit a 1024-token context"),
])
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    proc = run_bench("bench", "--quick", *args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvchat: error: "), proc.stderr
    assert message in lines[0]
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_bytes_per_token_skip_untied_embeddings_and_follow_the_split() -> None:
    shape, mix = parse_shape("llama-3.1-8b:Q4_K_M")
    header = shape_header(shape, mix)
    embd = next(t.n_bytes for t in header.tensors if t.name == "token_embd.weight")
    total = sum(t.n_bytes for t in header.tensors)
    gpu, cpu, counted = bytes_read_per_token(header, header.n_layers + 1)
    assert (gpu, cpu) == (total - embd, 0)
    assert "except token_embd.weight" in counted
    assert bytes_read_per_token(header, 0)[:2] == (0, total - embd)
    # 8 of 32 layers and the output layer on the GPU: the last layers go first.
    gpu, cpu, _ = bytes_read_per_token(header, 9)
    layer_bytes = [sum(t.n_bytes for t in header.tensors if t.name.startswith(f"blk.{i}."))
                   for i in range(header.n_layers)]
    assert cpu == sum(layer_bytes[:24])
    assert gpu + cpu == total - embd


def test_bytes_per_token_count_tied_embeddings_in_full() -> None:
    header = read_gguf_header(default_model_path())
    gpu, cpu, counted = bytes_read_per_token(header, 0)
    assert gpu == 0 and cpu == sum(t.n_bytes for t in header.tensors)
    assert "tied output matrix" in counted


def test_ceiling_adds_the_time_on_each_device() -> None:
    assert ceiling_tokens_per_s(0, 10**9, None, 2 * 10**10) == pytest.approx(20.0)
    # 1 GB on a 1000 GB/s GPU (1 ms) then 1 GB on a 10 GB/s CPU (100 ms)
    assert ceiling_tokens_per_s(10**9, 10**9, 10**12, 10**10) == pytest.approx(1 / 0.101)
    with pytest.raises(ValueError):
        ceiling_tokens_per_s(10**9, 0, None, 10**10)


def test_speculative_extra_line_names_its_mode_and_identity() -> None:
    from bench.report import extra_line

    # A result as benchmarks/speculative.py writes it (kept from a real run).
    result = json.loads((Path(__file__).parent.parent / "benchmarks" / "results"
                         / "spec_cpu2_greedy_before_invariant.json").read_text())
    line = extra_line("speculative", result)
    assert line.startswith("(prompt-lookup, temperature 0) ")
    assert f"repetitive {result['repetitive']['ratio']:.2f}x" in line
    assert "free-form" in line and "settings" not in line
    assert line.count("not identical") == (not result["repetitive"]["identical"]) + (
        not result["free-form"]["identical"])
