"""Grammar-constrained sampling that stays cheap with a 262k-token vocabulary.

llama.cpp's grammar sampler checks every candidate it is given against the grammar,
decoding each token's text: over a whole 262k vocabulary that is the slowest part of a
step by far. Only the likeliest candidates are offered instead (the end-of-turn tokens
always among them, so a finished grammar can end the reply), widening to the whole
vocabulary only when none of them is allowed. Under greedy decoding this picks exactly
the token a whole-vocabulary check would: the best allowed token among the top k is the
best allowed token overall whenever there is one. With temperature it samples from the
target's distribution restricted to the allowed tokens among the widest set tried.

Runs on the engine thread only, like every llama.cpp object.
"""

from __future__ import annotations

import ctypes

import llama_cpp
import numpy as np
from llama_cpp import _internals

TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])
WIDTHS = (64, 4096)
"""Candidate sets tried before the whole vocabulary."""


class GrammarError(ValueError):
    """The grammar text does not parse (llama.cpp logged why)."""


class ConstrainedSampler:
    """``chain`` (penalties, top-k/p, temperature, greedy or dist) applied after a
    grammar filter. Same ``sample(ctx, idx)`` / ``close()`` as llama.cpp's chain, so the
    token loop and verification rounds use either without knowing which."""

    def __init__(self, model: _internals.LlamaModel, grammar: str,
                 chain: _internals.LlamaSampler, always: list[int]) -> None:
        grammar_p = llama_cpp.llama_sampler_init_grammar(model.vocab, grammar.encode(),
                                                         b"root")
        if not grammar_p:
            raise GrammarError("llama.cpp could not parse the grammar")
        self._grammar = grammar_p
        self.chain = chain
        self.n_vocab = model.n_vocab()
        self._always = np.asarray(sorted(set(always)), dtype=np.int32)
        self._buf = np.zeros(self.n_vocab, dtype=TOKEN_DATA)
        self.widened = 0
        """Steps where no top-k candidate was allowed and a wider set was checked."""

    def sample(self, ctx: _internals.LlamaContext, idx: int = -1) -> int:
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx.ctx, idx),
                                       shape=(self.n_vocab,))
        for width in (*WIDTHS, self.n_vocab):
            ids = self._candidates(logits, width)
            n = len(ids)
            buf = self._buf[:n]
            buf["id"] = ids
            buf["logit"] = logits[ids]
            buf["p"] = 0.0
            cur = llama_cpp.llama_token_data_array(
                data=buf.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data)),
                size=n, selected=-1, sorted=False)
            llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(cur))
            if np.isfinite(buf["logit"]).any():
                break
            self.widened += 1
        else:
            # Nothing is allowed (a finished grammar whose end-of-turn tokens are banned):
            # end the reply; the token loop stops on an end-of-turn token under a grammar.
            return int(self._always[0]) if len(self._always) else 0
        # The chain sorts and selects in place; `selected` indexes the (reordered) array.
        llama_cpp.llama_sampler_apply(self.chain.sampler, ctypes.byref(cur))
        token = int(buf["id"][cur.selected])
        llama_cpp.llama_sampler_accept(self._grammar, token)
        llama_cpp.llama_sampler_accept(self.chain.sampler, token)
        return token

    def _candidates(self, logits: np.ndarray, width: int) -> np.ndarray:
        if width >= self.n_vocab:
            return np.arange(self.n_vocab, dtype=np.int32)
        top = np.argpartition(logits, -width)[-width:].astype(np.int32)
        return np.union1d(top, self._always)

    def close(self) -> None:
        if self._grammar:
            llama_cpp.llama_sampler_free(self._grammar)
            self._grammar = None
        self.chain.close()
