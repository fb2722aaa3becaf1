"""A sampler chain per reply: as the single-sequence path draws tokens
(``engine.decode.sampling``), behind a grammar filter when one is given; and the one
argmax that draws a step's plain greedy rows together."""

from __future__ import annotations

from typing import TYPE_CHECKING

import llama_cpp
import numpy as np
from llama_cpp import _internals

from engine.config import SamplingConfig
from engine.decode.sampling.chain import GreedyArgmax, best_allowed, build_sampler
from engine.decode.sampling.choice import Sampler
from engine.decode.sampling.constrained import ConstrainedSampler, GrammarError
from engine.errors import ConstraintError
from engine.model.loader import LoadedModel
from engine.structured.budget import budget_for
from engine.structured.spec import OutputSpec, gbnf_for

if TYPE_CHECKING:
    from engine.batch.slots import Slot

Grammar = OutputSpec | str
"""An output format (its grammar, and the budget that plans its end), or GBNF text."""


def sampler_for(lm: LoadedModel, sampling: SamplingConfig, *, ignore_eos: bool,
                grammar: Grammar | None) -> Sampler:
    """The chain for one reply. Raises ConstraintError for a grammar that cannot be
    built. The host samplers only: an in-graph chain is attached per sequence and
    would make llama.cpp re-plan its graphs whenever a reply joins."""
    banned = lm.eog_tokens() if ignore_eos and grammar is None else None
    chain, _seed = build_sampler(sampling, lm.model.n_vocab(), banned,
                                 native=grammar is not None)
    if grammar is None:
        return chain
    assert isinstance(chain, _internals.LlamaSampler)
    spec = grammar if isinstance(grammar, OutputSpec) else None
    try:
        text = gbnf_for(spec) if spec is not None else str(grammar)
        return ConstrainedSampler(
            lm.model, text, chain, always=lm.eog_tokens(), piece=lm.token_piece,
            budget=budget_for(spec, sampling.max_tokens) if spec is not None else None)
    except (ValueError, GrammarError) as exc:
        chain.close()
        what = spec.describe() if spec is not None else "the grammar"
        raise ConstraintError(f"cannot constrain the reply to {what}: {exc}") from None


def seeded(sampling: SamplingConfig, k: int) -> SamplingConfig:
    """The sampling of the ``k``-th of N answers: a given seed moves by ``k``, so the
    answers differ and each is reproducible."""
    if k == 0 or sampling.seed is None:
        return sampling
    return sampling.model_copy(update={"seed": sampling.seed + k})


def greedy_tokens(lm: LoadedModel, decoding: list[Slot]) -> dict[int, int]:
    """The tokens of a step's plain greedy rows (the host argmax, which keeps no state
    to accept into) of replies with no drafts, by reply id, from one argmax over their
    logits. The decoding rows (pending tokens and drafts) are the batch's first, each
    with logits, so a row's logits are that row of ``llama_get_logits``. The first
    maximum wins, as in llama.cpp's greedy sampler; a banned end of generation goes to
    the next best."""
    greedy = [(s, s.sampler) for s in decoding
              if not s.drafts and isinstance(s.sampler, GreedyArgmax)]
    if not greedy:
        return {}
    rows = decoding[-1].row + 1 + len(decoding[-1].drafts)
    logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits(lm.ctx.ctx),
                                   shape=(rows, lm.model.n_vocab()))
    # One row each, all greedy (the usual case): read in place, nothing is copied.
    best = np.argmax(logits, axis=1) if len(greedy) == rows else \
        [np.argmax(logits[s.row]) for s, _ in greedy]
    tokens = {}
    for (slot, sampler), token in zip(greedy, best, strict=True):
        tokens[slot.reply] = int(token) if int(token) not in sampler.banned else \
            best_allowed(logits[slot.row], sampler.banned)
    return tokens
