"""kvchat quantize and kvchat quality, through llama.cpp's own quantizer and real models:
the default SmolLM2 quantized, scored against itself and its quants, refused where it
must be; the plan and model_loaded showing what was measured."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
from pathlib import Path

import pytest

from engine.api import ChatMessage
from engine.backends.local import LocalEngine
from engine.config import ModelConfig, SamplingConfig
from engine.errors import ConfigError
from engine.events import Done
from engine.model.gguf_header import read_gguf_header
from engine.model.quant_costs import DEQUANTIZED_FROM, quant_name
from engine.quant.quality import default_text
from engine.quant.quantize import check_disk
from tests.conftest import chat_request, kvchat_exe, run_kvchat

SHORT_CTX = "64"


@pytest.fixture(scope="module")
def quants(tmp_path_factory: pytest.TempPathFactory, default_path: Path) -> dict[str, Path]:
    """The default model requantized to Q8_0 and Q4_0 (once for the module)."""
    folder = tmp_path_factory.mktemp("quants")
    proc = run_kvchat("quantize", str(default_path), "--to", "Q8_0,Q4_0",
                      "--allow-requantize", "-o", str(folder), home=folder / "home")
    assert proc.returncode == 0, proc.stderr
    files = {q: folder / f"SmolLM2-135M-Instruct-{q}.gguf" for q in ("Q8_0", "Q4_0")}
    for quant, path in files.items():
        assert f"{quant:<8} {path}  predicted" in proc.stdout
    return files


@pytest.fixture
def short_text(tmp_path: Path) -> Path:
    """About 300 tokens of the default text: four 64-token chunks."""
    path = tmp_path / "short.txt"
    path.write_text(default_text()[1][:1300], encoding="utf-8")
    return path


async def test_quantized_files_load_and_generate(quants: dict[str, Path]) -> None:
    for quant, path in quants.items():
        header = read_gguf_header(path)
        assert quant_name(header) == quant
        engine = LocalEngine(ModelConfig(path=path, n_ctx=512),
                             SamplingConfig(temperature=0.0, max_tokens=8, seed=0))
        info = await engine.start()
        try:
            assert info.quant == quant
            final = None
            async for event in engine.chat(chat_request(
                    [ChatMessage(role="user", content="Name a colour.")])):
                final = event
            assert isinstance(final, Done) and final.completion_tokens > 0 and final.text
        finally:
            await engine.close()


def test_predicted_size_is_the_size_written(quants: dict[str, Path],
                                            default_path: Path) -> None:
    from engine.quant.targets import TARGETS, predicted_bytes

    source = read_gguf_header(default_path)
    for quant, path in quants.items():
        assert predicted_bytes(source, TARGETS[quant]) == path.stat().st_size


def _quality(*args: str, home: Path) -> dict:
    proc = run_kvchat("quality", *args, "--ctx", SHORT_CTX, "--json", home=home, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_a_file_against_itself_costs_nothing_and_a_coarser_quant_does(
        quants: dict[str, Path], default_path: Path, short_text: Path,
        kvchat_home: Path) -> None:
    out = kvchat_home / "out"
    report = _quality(str(default_path), str(default_path), str(quants["Q4_0"]),
                      "--text", str(short_text), "--out", str(out), home=kvchat_home)
    assert json.loads((out / "quality.json").read_text()) == report
    assert (out / "quality.svg").read_text().lstrip().startswith("<?xml")
    assert report["text"]["positions"] == report["text"]["chunks"] * 31
    same, coarser = report["candidates"]
    assert abs(same["kl_mean"]) < 1e-6 and same["kl_p99"] < 1e-5
    assert same["top1"] == 1.0
    assert same["ppl"] == pytest.approx(report["reference"]["ppl"], rel=1e-6)
    assert coarser["quant"] == "Q4_0"
    assert coarser["kl_mean"] > 1e-3 and coarser["kl_p99"] > coarser["kl_mean"]
    assert coarser["top1"] < 1.0


@pytest.mark.parametrize("model", ["default", "gemma"])
def test_code_tasks_run_against_their_tests(model: str, default_path: Path, gemma_path: Path,
                                            short_text: Path, kvchat_home: Path) -> None:
    """--code asks each model for small functions and runs each answer's tests: a chat
    model (SmolLM2) in chat turns, a base model (Gemma 3, no chat template) as a
    function to complete. Greedy, so a file scored twice writes the same programs."""
    path = str(default_path if model == "default" else gemma_path)
    report = _quality(path, path, "--text", str(short_text), "--code", "--code-limit", "2",
                      home=kvchat_home)
    ref, same = report["reference"], report["candidates"][0]
    assert [row["task"] for row in ref["code"]] == ["is_prime", "factorial"]
    for row in ref["code"]:
        assert row["tokens"] > 0
        assert row["passed"] == (row["why"] == ""), row
    assert same["code"] == ref["code"]
    assert ref["code_pass_rate"] == sum(r["passed"] for r in ref["code"]) / 2


def test_another_vocabulary_is_refused(default_path: Path, gemma_path: Path,
                                       short_text: Path, kvchat_home: Path) -> None:
    proc = run_kvchat("quality", str(default_path), str(gemma_path), "--text",
                      str(short_text), "--ctx", SHORT_CTX, home=kvchat_home, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"kvchat: error: {gemma_path.name}: its vocabulary differs from "
        f"{default_path.name}'s (262144 tokens against 49152): KL divergence compares "
        "distributions over the same tokens")


def test_plan_and_model_loaded_show_the_measured_cost(
        quants: dict[str, Path], default_path: Path, short_text: Path,
        kvchat_home: Path) -> None:
    plan_args = ("plan", str(default_path), "--budget", "150MiB", "--memory", "cpu")
    before = run_kvchat(*plan_args, home=kvchat_home)
    assert before.returncode == 0, before.stderr
    lines = before.stdout.splitlines()
    row = lines.index(next(ln for ln in lines if ln.strip().startswith("a Q4_0 file")))
    assert "quality: not measured" in lines[row + 1]

    _quality(str(default_path), str(quants["Q4_0"]), "--text", str(short_text),
             home=kvchat_home)
    after = run_kvchat(*plan_args, home=kvchat_home).stdout.splitlines()
    row = after.index(next(ln for ln in after if ln.strip().startswith("a Q4_0 file")))
    assert "quality: KL " in after[row + 1] and "vs Q4_1" in after[row + 1]
    q3 = after.index(next(ln for ln in after if ln.strip().startswith("a Q3_K_M file")))
    assert "quality: not measured" in after[q3 + 1]

    planned = json.loads(run_kvchat(*plan_args, "--json", home=kvchat_home).stdout)
    q4 = next(a for a in planned["alternatives"] if a["quant"] == "Q4_0")
    assert q4["quality"]["kl_mean"] > 0 and q4["quality"]["reference"] == "Q4_1"


async def test_model_loaded_carries_the_measured_cost(
        quants: dict[str, Path], default_path: Path, short_text: Path,
        kvchat_home: Path) -> None:
    engine = LocalEngine(ModelConfig(path=quants["Q8_0"], n_ctx=256))
    info = await engine.start()
    await engine.close()
    assert info.quant == "Q8_0" and info.quant_cost == "quality not measured"
    _quality(str(default_path), str(quants["Q8_0"]), "--text", str(short_text),
             home=kvchat_home)
    engine = LocalEngine(ModelConfig(path=quants["Q8_0"], n_ctx=256))
    info = await engine.start()
    await engine.close()
    assert info.quant_cost.startswith("KL ") and info.quant_cost.endswith("vs Q4_1")


def test_an_existing_output_is_refused_without_force(default_path: Path,
                                                     tmp_path: Path) -> None:
    out = tmp_path / "SmolLM2-135M-Instruct-Q4_0.gguf"
    out.write_bytes(b"an older file")
    args = ("quantize", str(default_path), "--to", "Q4_0", "--allow-requantize",
            "-o", str(tmp_path))
    proc = run_kvchat(*args, home=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr == f"kvchat: error: {out} exists (--force to replace it)\n"
    assert out.read_bytes() == b"an older file"
    proc = run_kvchat(*args, "--force", home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert quant_name(read_gguf_header(out)) == "Q4_0"


def test_bad_requests_are_one_line_errors(default_path: Path, tmp_path: Path,
                                          bad_files: dict[str, Path]) -> None:
    cases = [
        (("quantize", str(default_path), "--to", "Q9_X"),
         "kvchat: error: unknown quant type Q9_X (valid: F16, BF16, Q8_0, Q6_K"),
        (("quantize", str(default_path), "--to", "Q5_K_M", "-o", str(tmp_path)),
         "kvchat: error: SmolLM2-135M-Instruct.Q4_1.gguf is already Q4_1: requantizing "
         "Q4_1 to Q5_K_M cannot add back what was lost"),
        (("quantize", str(bad_files["text"]), "--to", "Q4_0"),
         f"kvchat: error: {bad_files['text']} is not a GGUF model file"),
        (("quantize", str(bad_files["truncated"]), "--to", "Q4_0"),
         f"kvchat: error: {bad_files['truncated']}: GGUF file is truncated or corrupt"),
    ]
    for args, start in cases:
        proc = run_kvchat(*args, home=tmp_path)
        assert proc.returncode == 2, args
        assert proc.stderr.startswith(start), proc.stderr
        assert len(proc.stderr.splitlines()) == 1
    assert list(tmp_path.glob("*.gguf")) == []


def test_too_little_disk_is_refused_before_writing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not enough disk space"):
        check_disk(tmp_path, 1 << 60, 0)
    check_disk(tmp_path, 1 << 20, 0)


def test_a_failed_quantization_leaves_nothing(default_path: Path, tmp_path: Path) -> None:
    """llama.cpp refuses an architecture it does not know, after kvchat's checks pass
    (the header's ``llama`` keys renamed ``llamx``, lengths unchanged)."""
    data = default_path.read_bytes()
    end = read_gguf_header(default_path).data_offset
    needle = b"general.architecture" + struct.pack("<IQ", 8, 5) + b"llama"
    head = data[:end].replace(needle, needle[:-5] + b"llamx", 1).replace(b"llama.", b"llamx.")
    source = tmp_path / "odd.Q4_1.gguf"
    source.write_bytes(head + data[end:])
    out = tmp_path / "out"
    proc = run_kvchat("quantize", str(source), "--to", "Q4_0", "--allow-requantize",
                      "-o", str(out), home=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.startswith("kvchat: error: llama.cpp could not quantize odd.Q4_1.gguf "
                                  "to Q4_0: ")
    assert "unknown model architecture" in proc.stderr
    assert list(out.iterdir()) == []


def test_an_interrupted_quantization_leaves_no_file(gemma_path: Path, tmp_path: Path) -> None:
    """Ctrl+C a quarter of the way through: the child is killed, the temporary file
    removed, nothing carries the final name."""
    env = {**os.environ, "KVCHAT_HOME": str(tmp_path / "home")}
    proc = subprocess.Popen(
        [kvchat_exe(), "quantize", str(gemma_path), "--to", "Q6_K", "--allow-requantize",
         "--threads", "1", "-o", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        # Ctrl+C reaches it even when this run was started in the background, where the
        # shell hands every child SIGINT ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stderr is not None
    first = proc.stderr.readline()
    assert first.startswith("Q6_K: ") and "/236 tensors" in first
    assert list(tmp_path.glob(".gemma-3-270m-Q6_K.gguf.*.part"))  # it is being written
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 130
    assert rest.strip().endswith("kvchat: interrupted")
    assert [p.name for p in tmp_path.iterdir() if "gemma" in p.name] == []


def test_dequantize_first_writes_an_f16_reference(default_path: Path, tmp_path: Path) -> None:
    proc = run_kvchat("quantize", str(default_path), "--to", "Q8_0", "--dequantize-first",
                      "-o", str(tmp_path), home=tmp_path / "home")
    assert proc.returncode == 0, proc.stderr
    assert "not against the original training weights" in proc.stderr
    ref = read_gguf_header(tmp_path / "SmolLM2-135M-Instruct-F16-from-Q4_1.gguf")
    assert quant_name(ref) == "F16" and ref.metadata[DEQUANTIZED_FROM] == "Q4_1"
    assert {t.type_name for t in ref.tensors} == {"F16", "F32"}
    out = read_gguf_header(tmp_path / "SmolLM2-135M-Instruct-Q8_0-from-Q4_1.gguf")
    assert quant_name(out) == "Q8_0" and out.metadata[DEQUANTIZED_FROM] == "Q4_1"
    again = run_kvchat("quantize", str(default_path), "--to", "Q4_0", "--dequantize-first",
                       "-o", str(tmp_path), home=tmp_path / "home")
    assert again.returncode == 0, again.stderr
    assert "using SmolLM2-135M-Instruct-F16-from-Q4_1.gguf" in again.stderr
