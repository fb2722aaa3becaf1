"""One model over a text, through llama.cpp's low-level API: the logits of every scored
position, and a short greedy decode for its speed.

The text is scored as llama.cpp's ``llama-perplexity`` scores it, so the two agree:
tokenized whole (the model's BOS added if its vocabulary asks for one), cut into chunks
of ``n_ctx`` tokens (a last partial chunk is dropped), each chunk evaluated from an
empty cache with its first token replaced by BOS where the model adds one, and only the
second half of each chunk scored: the logits at positions ``n_ctx/2 .. n_ctx-2``
predicting the token after each. Every scored token has seen at least half a chunk.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import llama_cpp
import numpy as np
from llama_cpp import _internals

from engine.config import usable_cores
from engine.errors import ModelLoadError
from engine.model import llama_log

DECODE_PROMPT = "The history of the printing press begins"


class Scorer:
    """A model and a context of ``n_ctx`` cells, every chunk position able to output."""

    def __init__(self, path: Path, n_ctx: int, threads: int | None = None) -> None:
        llama_log.install()
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = 0
        try:
            self.model = _internals.LlamaModel(path_model=str(path), params=mparams,
                                               verbose=True)
        except ValueError:
            detail = llama_log.recent_errors() or "llama.cpp could not load it"
            raise ModelLoadError(f"cannot load {path}: {detail}") from None
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = n_ctx
        cparams.n_ubatch = min(512, n_ctx)
        cparams.n_outputs_max = n_ctx
        cparams.n_outputs_max_per_seq = 0
        cparams.swa_full = False  # as llama.cpp's tools set it
        cparams.n_threads = cparams.n_threads_batch = threads or usable_cores()
        cparams.no_perf = True
        try:
            self.ctx = _internals.LlamaContext(model=self.model, params=cparams, verbose=True)
        except ValueError:
            self.model.close()
            raise ModelLoadError(f"cannot create a {n_ctx}-token context for {path}: "
                                 f"{llama_log.recent_errors() or 'out of memory?'}") from None
        self.path = path
        self.n_ctx = n_ctx
        self.n_vocab = self.model.n_vocab()
        self.batch = llama_cpp.llama_batch_init(n_ctx, 0, 1)
        self._decode_started = 0.0

    def close(self) -> None:
        llama_cpp.llama_batch_free(self.batch)
        self.ctx.close()
        self.model.close()

    def __enter__(self) -> Scorer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def tokenize(self, text: str) -> list[int]:
        """As llama-perplexity does: special tokens added (BOS if the model adds one),
        none parsed from the text."""
        return self.model.tokenize(text.encode("utf-8"), add_bos=True, special=False)

    def chunks(self, tokens: list[int]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Per chunk: the logits of its scored positions (float32, rows x n_vocab) and
        the tokens they predict."""
        n_ctx, first = self.n_ctx, self.n_ctx // 2
        bos = self.model.token_bos() if self.model.add_bos_token() else -1
        for start in range(0, len(tokens) // n_ctx * n_ctx, n_ctx):
            chunk = tokens[start:start + n_ctx]
            if bos >= 0:
                chunk = [bos, *chunk[1:]]
            yield self._logits(chunk, first), np.asarray(chunk[first + 1:], dtype=np.int64)

    def _logits(self, chunk: list[int], first: int) -> np.ndarray:
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx.ctx), True)
        b = self.batch
        b.n_tokens = len(chunk)
        for i, token in enumerate(chunk):
            b.token[i] = token
            b.pos[i] = i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            b.logits[i] = i >= first
        if llama_cpp.llama_decode(self.ctx.ctx, b) != 0:
            raise ModelLoadError(f"llama.cpp could not evaluate a chunk of {self.path.name}")
        rows = len(chunk) - 1 - first
        out = np.empty((rows, self.n_vocab), dtype=np.float32)
        for row in range(rows):
            ptr = llama_cpp.llama_get_logits_ith(self.ctx.ctx, first + row)
            out[row] = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))
        return out

    def decode_speed(self, n_tokens: int = 64) -> float:
        """Tokens per second of a greedy decode, one token a step after a short
        prompt (end of generation not stopping it)."""
        n = len(self._greedy(self.tokenize(DECODE_PROMPT), n_tokens, lambda _t: False))
        return n / (time.perf_counter() - self._decode_started)

    def complete(self, text: str, max_tokens: int, stop: Callable[[str], bool]) -> str:
        """Greedy continuation of ``text`` until ``stop`` is true of what was written,
        an end-of-generation token, or ``max_tokens``."""
        pieces: list[bytes] = []

        def done(token: int) -> bool:
            if llama_cpp.llama_vocab_is_eog(self.model.vocab, token):
                return True
            pieces.append(self._piece(token))
            return stop(b"".join(pieces).decode("utf-8", "ignore"))

        self._greedy(self.tokenize(text), max_tokens, done)
        return b"".join(pieces).decode("utf-8", "replace")

    def _piece(self, token: int) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self.model.vocab, token, buf, len(buf), 0, False)
        return buf.raw[:max(n, 0)]

    def _greedy(self, prompt: list[int], n_tokens: int, stop: Callable[[int], bool],
                ) -> list[int]:
        """Decode greedily after ``prompt``, one token a step, until ``stop(token)``."""
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx.ctx), True)
        b = self.batch
        b.n_tokens = len(prompt)
        for i, token in enumerate(prompt):
            b.token[i], b.pos[i], b.n_seq_id[i], b.seq_id[i][0] = token, i, 1, 0
            b.logits[i] = i == len(prompt) - 1
        if llama_cpp.llama_decode(self.ctx.ctx, b) != 0:
            raise ModelLoadError(f"llama.cpp could not decode with {self.path.name}")
        pos, last, out = len(prompt), len(prompt) - 1, []
        self._decode_started = time.perf_counter()  # after the prompt: decode alone
        for _ in range(min(n_tokens, self.n_ctx - pos)):
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.ctx.ctx, last),
                                           shape=(self.n_vocab,))
            token = int(logits.argmax())
            out.append(token)
            if stop(token):
                break
            b.n_tokens = 1
            b.token[0], b.pos[0], b.n_seq_id[0], b.seq_id[0][0] = token, pos, 1, 0
            b.logits[0] = True
            if llama_cpp.llama_decode(self.ctx.ctx, b) != 0:
                raise ModelLoadError(f"llama.cpp could not decode with {self.path.name}")
            pos, last = pos + 1, 0
        return out
