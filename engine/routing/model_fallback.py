"""Ask the model itself for a route when the cheap signals are unsure.

The question runs in a small side context on the same weights (only a few MB of KV
and compute buffer), so the conversation's KV cache is never touched and the next
turn still reuses it. The answer is constrained to exactly one of the route names (the
language of the grammar ``root ::= "code" | "qa" | ...``), so one short prefill and
usually no decode step decide it.
Runs on the engine thread only (it shares the model with the main context).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import llama_cpp
from llama_cpp import _internals

from engine.api import ChatMessage, ModelAnswer
from engine.model.loader import LoadedModel

SIDE_CTX = 512
"""Cells of the side context: the question, a clipped prompt and a one-word answer."""
PROMPT_CHARS = 600
"""Characters of the user's prompt shown to the classifier (its head says enough)."""
MAX_ANSWER_TOKENS = 8
"""Cells kept free after the question for the answer's tokens."""


def _question(text: str, routes: Sequence[str], descriptions: dict[str, str]) -> str:
    options = "\n".join(f"- {r}: {descriptions.get(r, r)}" for r in routes)
    clipped = text[:PROMPT_CHARS]
    return (f"Classify the request into one category.\n{options}\n\n"
            f"Request:\n{clipped}\n\nAnswer with the category name only.")


class RouteClassifier:
    """A side context that answers "which route?" with one grammar-constrained word."""

    def __init__(self, lm: LoadedModel) -> None:
        self.lm = lm
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = SIDE_CTX
        params.n_batch = SIDE_CTX
        params.n_ubatch = SIDE_CTX
        params.n_seq_max = 1
        params.no_perf = True
        threads = lm.ctx.params.n_threads
        params.n_threads = params.n_threads_batch = threads
        self.ctx = _internals.LlamaContext(model=lm.model, params=params, verbose=True)
        self.batch = _internals.LlamaBatch(n_tokens=SIDE_CTX, embd=0, n_seq_max=1)

    def close(self) -> None:
        self.batch.close()
        self.ctx.close()

    def classify(self, text: str, routes: Sequence[str],
                 descriptions: dict[str, str]) -> ModelAnswer:
        started = time.perf_counter()
        prompt = self.lm.chat_format.render(
            [ChatMessage(role="user", content=_question(text, routes, descriptions))])
        tokens = self.lm.tokenize(prompt, add_bos=True)
        if len(tokens) > 1 and tokens[0] == tokens[1] == self.lm.bos:
            tokens = tokens[1:]
        tokens = tokens[-(SIDE_CTX - MAX_ANSWER_TOKENS):]
        self.ctx.kv_cache_clear()
        self.batch.set_batch(tokens, n_past=0, logits_all=False)
        self.ctx.decode(self.batch)
        shares = self._first_token_share(routes)
        # Constrained decoding over a finite set of words: at each step only tokens that
        # continue some route name are allowed and the likeliest is taken. That is what
        # a GBNF grammar of the alternatives enforces, at the cost of a few logit reads
        # instead of llama.cpp's grammar check over the whole vocabulary (seconds per
        # step with a 262k vocabulary). Once one name is left, the rest is implied.
        spelled = {r: self.lm.tokenize(r, add_bos=False) for r in routes}
        chosen: list[int] = []
        while True:
            live = [r for r in routes if spelled[r][:len(chosen)] == chosen]
            longer = [r for r in live if len(spelled[r]) > len(chosen)]
            if len(live) <= 1 or not longer or any(len(spelled[r]) == len(chosen)
                                                   for r in live):
                break  # decided (a name that ends here beats its longer extensions)
            if chosen:
                self.batch.set_batch([chosen[-1]], n_past=len(tokens) + len(chosen) - 1,
                                     logits_all=False)
                self.ctx.decode(self.batch)
            logits = llama_cpp.llama_get_logits_ith(self.ctx.ctx, -1)
            chosen.append(max(sorted({spelled[r][len(chosen)] for r in longer}),
                              key=lambda t: logits[t]))
        live = [r for r in routes if spelled[r][:len(chosen)] == chosen]
        route = min(live, key=lambda r: len(spelled[r]))
        return ModelAnswer(route, round(shares.get(route, 0.0), 3),
                           (time.perf_counter() - started) * 1000, len(tokens))

    def _first_token_share(self, routes: Sequence[str]) -> dict[str, float]:
        """Softmax over each route's first token's logit at the answer's start."""
        logits = llama_cpp.llama_get_logits_ith(self.ctx.ctx, -1)
        firsts = {r: self.lm.tokenize(r, add_bos=False)[0] for r in routes}
        values = {r: float(logits[t]) for r, t in firsts.items()}
        top = max(values.values())
        exp = {r: math.exp(v - top) for r, v in values.items()}
        total = sum(exp.values())
        return {r: e / total for r, e in exp.items()}
