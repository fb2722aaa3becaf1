"""Grammar-constrained sampling that stays cheap with a 262k-token vocabulary.

llama.cpp's grammar sampler checks every candidate it is given against the grammar,
decoding each token's text: over a whole 262k vocabulary that is the slowest part of a
step by far. Only the likeliest candidates are offered instead (the end-of-turn tokens
always among them, so a finished grammar can end the reply), widening to the whole
vocabulary only when none of them is allowed. Under greedy decoding this picks exactly
the token a whole-vocabulary check would: the best allowed token among the top k is the
best allowed token overall whenever there is one. With temperature it samples from the
target's distribution restricted to the allowed tokens among the widest set tried.

With a budget (:mod:`engine.structured.budget`) the reply also plans for its token
limit: at an element boundary where another element would not fit, the sampler emits
the closing bracket (or ends the reply) in place of the comma the model chose, and a
finished JSON value ends the reply at once. The closing brackets and the newline are
among the candidates at every step, so one is always there to choose when the grammar
allows it.

Runs on the engine thread only, like every llama.cpp object.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import llama_cpp
import numpy as np
from llama_cpp import _internals

from engine.structured.budget import END, Budget

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
                 chain: _internals.LlamaSampler, always: list[int], *,
                 piece: Callable[[int], bytes], budget: Budget | None = None) -> None:
        grammar_p = llama_cpp.llama_sampler_init_grammar(model.vocab, grammar.encode(),
                                                         b"root")
        if not grammar_p:
            raise GrammarError("llama.cpp could not parse the grammar")
        self._grammar = grammar_p
        self.chain = chain
        self.n_vocab = model.n_vocab()
        self._always = np.asarray(sorted(set(always)), dtype=np.int32)
        self._buf = np.zeros(self.n_vocab, dtype=TOKEN_DATA)
        self._model = model
        self.budget = budget
        self._piece = piece
        """A token's bytes (the loader's cached lookup)."""
        self._firsts: dict[bytes, int | None] = {}
        enders = [t for text in (b"]", b"}", b"\n")
                  if (t := self._first_token(text)) is not None]
        self._offered = np.union1d(self._always, np.asarray(enders, dtype=np.int32)) \
            if budget is not None else self._always
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
        allowed = buf["id"][np.isfinite(buf["logit"])].copy()
        # The chain sorts and selects in place; `selected` indexes the (reordered) array.
        llama_cpp.llama_sampler_apply(self.chain.sampler, ctypes.byref(cur))
        token = int(buf["id"][cur.selected])
        if self.budget is not None:
            token = self._within_budget(token, allowed, logits)
            self.budget.accept(self._piece(token))
        llama_cpp.llama_sampler_accept(self._grammar, token)
        llama_cpp.llama_sampler_accept(self.chain.sampler, token)
        return token

    def _candidates(self, logits: np.ndarray, width: int) -> np.ndarray:
        if width >= self.n_vocab:
            return np.arange(self.n_vocab, dtype=np.int32)
        top = np.argpartition(logits, -width)[-width:].astype(np.int32)
        return np.union1d(top, self._offered)

    def _within_budget(self, token: int, allowed: np.ndarray, logits: np.ndarray) -> int:
        """``token``, or what the budget asks for in its place: an end-of-turn token, or
        the allowed token that goes furthest along the bytes it wants (the likeliest of
        those that go equally far). ``token`` when the grammar allows none of them."""
        assert self.budget is not None
        want = self.budget.instead_of(self._piece(token))
        if want is None:
            return token
        if want == END:
            ends = np.intersect1d(allowed, self._always)
            return int(ends[np.argmax(logits[ends])]) if len(ends) else token
        options = [int(t) for t in allowed if self._starts(want, int(t))]
        first = self._first_token(want)
        if first is not None and first not in options and self._allows(first):
            options.append(first)
        if not options:
            return token
        return max(options, key=lambda t: (len(self._piece(t)), logits[t]))

    def _starts(self, want: bytes, token: int) -> bool:
        piece = self._piece(token)
        return bool(piece) and want.startswith(piece)

    def _first_token(self, text: bytes) -> int | None:
        """The first token of ``text`` when its bytes begin ``text``."""
        if text not in self._firsts:
            ids = self._model.tokenize(text, add_bos=False, special=False)
            self._firsts[text] = ids[0] if ids and self._starts(text, ids[0]) else None
        return self._firsts[text]

    def _allows(self, token: int) -> bool:
        """Whether the grammar, in its current state, allows ``token``."""
        one = np.zeros(1, dtype=TOKEN_DATA)
        one["id"] = token
        cur = llama_cpp.llama_token_data_array(
            data=one.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data)),
            size=1, selected=-1, sorted=False)
        llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(cur))
        return bool(np.isfinite(one["logit"][0]))

    def close(self) -> None:
        if self._grammar:
            llama_cpp.llama_sampler_free(self._grammar)
            self._grammar = None
        self.chain.close()
