"""Build llama.cpp's native sampler chain from one SamplingConfig.

Sampling runs inside llama.cpp on the context's logits row: no copy of the 262k-float
vocabulary into numpy per token.
"""

from __future__ import annotations

import random

from llama_cpp import _internals

from engine.config import SamplingConfig

NEG_INF = float("-inf")


def build_sampler(params: SamplingConfig, n_vocab: int, banned: list[int] | None = None,
                  ) -> tuple[_internals.LlamaSampler, int]:
    """The sampler chain and the seed it uses (fresh when ``params.seed`` is empty)."""
    seed = params.seed if params.seed is not None else random.randrange(2**31)
    chain = _internals.LlamaSampler()
    if banned:
        chain.add_logit_bias(n_vocab, {tok: NEG_INF for tok in banned})
    if params.repeat_penalty != 1.0 and params.repeat_last_n:
        chain.add_penalties(n_vocab, params.repeat_last_n, params.repeat_penalty, 0.0, 0.0)
    if params.temperature <= 0.0:
        chain.add_greedy()
        return chain, seed
    if params.top_k > 0:
        chain.add_top_k(params.top_k)
    if params.top_p < 1.0:
        chain.add_top_p(params.top_p, 1)
    if params.min_p > 0.0:
        chain.add_min_p(params.min_p, 1)
    chain.add_temp(params.temperature)
    chain.add_dist(seed)
    return chain, seed
