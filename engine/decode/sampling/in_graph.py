"""Greedy decoding chosen inside llama.cpp's graph, next to the logits.

llama.cpp can attach a sampler chain to a sequence (``llama_set_sampler``): the chain's
ops are appended to the model's graph and run on the device that computes the output
layer. For greedy decoding that is one argmax per output row, so the host reads back
one token id instead of scanning a 128k-262k float row between two graphs, time in
which a GPU sits idle. On a CPU backend the argmax merely moves into llama.cpp's
threads.

An attached chain changes what a decode hands back: the raw logits buffer is no
longer filled for the sequence (``llama_get_logits_ith`` would return stale rows), the
chain's own copy is (``llama_get_sampled_logits_ith``). ``logits_row`` reads that copy,
and the chain must be detached before any host-side sampler reads the context.
"""

from __future__ import annotations

import llama_cpp
import numpy as np
from llama_cpp import _internals

from engine.decode.sampling.chain import best_allowed


class DeviceSamplerError(RuntimeError):
    """llama.cpp refused to run the chain in its graph (an op or backend without
    support): the caller falls back to sampling on the host."""


class DeviceGreedy:
    """Greedy decoding with the argmax in the graph; same ``sample`` / ``close`` as the
    host samplers, plus ``logits_row`` for callers that inspect the row (the
    speculative near-tie guard)."""

    def __init__(self, ctx: _internals.LlamaContext, seq: int, n_vocab: int) -> None:
        self.ctx, self.seq, self.n_vocab = ctx, seq, n_vocab
        self.banned: frozenset[int] = frozenset()
        """Ids this reply may not choose (end of turn, for benchmarks). Checked on the
        host rather than built into the chain: one chain serves every greedy reply,
        and each new chain would make llama.cpp re-plan its graphs."""
        self.chain: _internals.LlamaSampler | None = _internals.LlamaSampler()
        self.chain.add_greedy()
        if not llama_cpp.llama_set_sampler(ctx.ctx, seq, self.chain.sampler):
            self.chain.close()
            self.chain = None
            raise DeviceSamplerError("llama.cpp cannot run greedy sampling in its graph "
                                     "on this backend")

    def sample(self, ctx: _internals.LlamaContext, idx: int = -1) -> int:
        token = int(llama_cpp.llama_get_sampled_token_ith(ctx.ctx, idx))
        if token == llama_cpp.LLAMA_TOKEN_NULL or token in self.banned:
            # Not sampled in the graph, or a banned id won (rare): the best allowed
            # id from the row the graph copied back, as the host argmax picks it.
            token = best_allowed(self.logits_row(ctx, idx), self.banned)
        return token

    def logits_row(self, ctx: _internals.LlamaContext, idx: int) -> np.ndarray:
        """Row ``idx``'s logits, as the graph copied them back next to its choice."""
        count = llama_cpp.llama_get_sampled_logits_count_ith(ctx.ctx, idx)
        ptr = llama_cpp.llama_get_sampled_logits_ith(ctx.ctx, idx)
        if not ptr or count != self.n_vocab:
            raise DeviceSamplerError(f"no logits for output row {idx}")
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def close(self) -> None:
        """Detach the chain from the context, then free it (in that order: the
        context holds a pointer to it)."""
        if self.chain is not None:
            llama_cpp.llama_set_sampler(self.ctx.ctx, self.seq, None)
            self.chain.close()
            self.chain = None
