"""Shared fixtures. Every engine test runs a real bundled model through llama.cpp: the
default SmolLM2-135M-Instruct unless it needs Gemma 3 270M's traits."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from engine.api import ChatMessage, ChatRequest
from engine.backends.local import LocalEngine
from engine.config import ModelConfig, SamplingConfig
from engine.model.bundled import bundled_model_path, default_model_path

ROOT = Path(__file__).resolve().parent.parent
GREEDY = SamplingConfig(temperature=0.0, max_tokens=24, seed=0)


@pytest.fixture(autouse=True)
def kvchat_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own data and config dir."""
    home = tmp_path / "kvchat-home"
    monkeypatch.setenv("KVCHAT_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def gemma_path() -> Path:
    """Gemma 3 270M, the base model with sliding-window layers and a 262k vocabulary."""
    return bundled_model_path("gemma3-270m")


@pytest.fixture(scope="session")
def default_path() -> Path:
    """SmolLM2-135M-Instruct, the model kvchat runs when none is configured."""
    return default_model_path()


@pytest.fixture
async def engine() -> AsyncIterator[LocalEngine]:
    eng = LocalEngine(ModelConfig(n_ctx=1024), GREEDY)
    await eng.start()
    yield eng
    await eng.close()


def chat_request(messages: Sequence[ChatMessage], sampling: SamplingConfig | None = None,
                 **options: Any) -> ChatRequest:
    """A request for ``ChatEngine.chat``: the messages, the sampling (None: the
    engine's default), then any other field by name."""
    return ChatRequest(messages=tuple(messages), sampling=sampling, **options)


def kvchat_exe() -> str:
    exe = Path(sys.executable).with_name("kvchat")
    return str(exe) if exe.exists() else shutil.which("kvchat") or "kvchat"


def run_kvchat(*args: str | bytes, home: Path, stdin: bytes | None = None,
               timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KVCHAT_HOME": str(home)}
    proc = subprocess.run([kvchat_exe(), *args], input=stdin, capture_output=True,
                          env=env, timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode,
                                       proc.stdout.decode("utf-8", "replace"),
                                       proc.stderr.decode("utf-8", "replace"))


def run_bench(*args: str) -> subprocess.CompletedProcess[str]:
    """``kvchat ARGS`` for the bench tests: the user's own home (the bench writes only
    where --out says), llama.cpp's threads passive between steps, a bench's time."""
    env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    return subprocess.run([kvchat_exe(), *args], capture_output=True, text=True, env=env,
                          timeout=600)


@pytest.fixture
def bad_files(tmp_path: Path, gemma_path: Path) -> Iterator[dict[str, Path]]:
    """Files that must be refused with a clear message, never crash llama.cpp."""
    files = tmp_path / "bad"
    files.mkdir()
    empty = files / "empty.gguf"
    empty.write_bytes(b"")
    text = files / "notes.gguf"
    text.write_text("this is a text file, not a model\n" * 20)
    truncated = files / "truncated.gguf"
    with open(gemma_path, "rb") as src:
        truncated.write_bytes(src.read(8 * 1024 * 1024))
    header_cut = files / "header-cut.gguf"
    with open(gemma_path, "rb") as src:
        header_cut.write_bytes(src.read(4096))
    garbage = files / "garbage.gguf"
    garbage.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + os.urandom(4096))
    yield {
        "missing": files / "missing.gguf",
        "directory": files,
        "empty": empty,
        "text": text,
        "truncated": truncated,
        "header_cut": header_cut,
        "garbage": garbage,
    }
