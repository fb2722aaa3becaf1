"""Which sampler draws a reply's tokens: llama.cpp's chain, a host argmax, an in-graph
argmax, or the chain behind a grammar filter.

Runs on the engine thread. The in-graph chain stays attached to the context across
replies, because attaching or detaching makes llama.cpp re-plan its graphs; it is
detached before any sampler that reads the raw logits rows draws from the context.
"""

from __future__ import annotations

import numpy as np
from llama_cpp import _internals

from engine.api import ChatRequest
from engine.decode.sampling.chain import GreedyArgmax, build_sampler
from engine.decode.sampling.constrained import ConstrainedSampler, GrammarError
from engine.decode.sampling.in_graph import DeviceGreedy, DeviceSamplerError
from engine.errors import ConstraintError
from engine.model.loader import LoadedModel
from engine.structured.budget import budget_for
from engine.structured.spec import gbnf_for

Sampler = _internals.LlamaSampler | GreedyArgmax | DeviceGreedy | ConstrainedSampler
"""Draws with ``sample(ctx, idx)``, accepting the token into its own state."""


class SamplerChoice:
    def __init__(self, lm: LoadedModel, seq: int, *, greedy_in_graph: bool) -> None:
        self.lm, self.seq = lm, seq
        self.n_vocab = lm.model.n_vocab()
        self.greedy_in_graph = greedy_in_graph
        """Whether plain greedy replies take their token inside llama.cpp's graph."""
        self._device: DeviceGreedy | None = None

    def for_request(self, req: ChatRequest) -> Sampler:
        """The sampler for ``req``, behind a grammar filter when the request is
        constrained. Raises ConstraintError for a grammar that cannot be built."""
        # A grammar decides where a constrained reply ends, so EOS is never banned there.
        banned = self.lm.eog_tokens() if req.ignore_eos and req.constraint is None else None
        chain, _seed = build_sampler(req.sampling, self.n_vocab, banned,
                                     native=req.constraint is not None)
        if isinstance(chain, GreedyArgmax) and self.prepare():
            assert self._device is not None
            self._device.banned = chain.banned
            return self._device
        self.detach()  # a host sampler must see the raw logits rows
        if req.constraint is None:
            return chain
        assert isinstance(chain, _internals.LlamaSampler)
        try:
            return ConstrainedSampler(
                self.lm.model, gbnf_for(req.constraint), chain, always=self.lm.eog_tokens(),
                budget=budget_for(req.constraint, req.sampling.max_tokens),
                piece=self.lm.token_piece)
        except (ValueError, GrammarError) as exc:
            chain.close()
            raise ConstraintError(f"cannot constrain the reply to "
                                  f"{req.constraint.describe()}: {exc}") from None

    def release(self, sampler: Sampler) -> None:
        """End of a reply: free its sampler, except the attached chain, which waits
        for the next reply."""
        if sampler is not self._device:
            sampler.close()

    def prepare(self) -> bool:
        """Attach the in-graph greedy chain if greedy replies use one; whether one is
        attached. Falls back to the host argmax for good where the backend cannot run
        it."""
        if self._device is None and self.greedy_in_graph:
            try:
                self._device = DeviceGreedy(self.lm.ctx, self.seq, self.n_vocab)
            except DeviceSamplerError:
                self.greedy_in_graph = False  # the backend will not change its mind
        return self._device is not None

    def detach(self) -> None:
        if self._device is not None:
            self._device.close()
            self._device = None


def near_tie(sampler: Sampler, ctx: _internals.LlamaContext, row: int, choice: int,
             guard: float) -> bool:
    """Whether another token's logit is within ``guard`` of ``choice``'s on ``row``.
    Only greedy samplers are guarded, and each knows where its row's logits live."""
    assert isinstance(sampler, GreedyArgmax | DeviceGreedy)
    logits = sampler.logits_row(ctx, row)
    return int(np.count_nonzero(logits > logits[choice] - guard)) > 1
