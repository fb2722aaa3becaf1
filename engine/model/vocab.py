"""A GGUF's tokenizer without its weights: exact token counts in a process that does
not hold the model (the app, when its engine runs in a process of its own)."""

from __future__ import annotations

from pathlib import Path

import llama_cpp
from llama_cpp import _internals

from engine.errors import ModelLoadError
from engine.model import llama_log


class VocabTokenizer:
    def __init__(self, path: Path) -> None:
        llama_log.install()  # llama.cpp's load log must not reach a running screen
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        try:
            self._model = _internals.LlamaModel(path_model=str(path), params=params,
                                                verbose=True)
        except ValueError:
            detail = llama_log.recent_errors() or "llama.cpp could not read it"
            raise ModelLoadError(f"cannot read the vocabulary of {path}: {detail}") from None

    def count(self, text: str) -> int:
        """Tokens ``text`` takes, as the loaded model's ``tokenize`` (no BOS; turn
        markers count as their control tokens)."""
        return len(self._model.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def close(self) -> None:
        self._model.close()
