"""Drafters for speculative decoding: cheap guesses at the next few tokens.

Two kinds behind one interface. Prompt lookup finds the conversation's latest earlier
occurrence of its last few tokens and proposes what followed it there: no second
model, strong wherever text repeats (code edits, quoting, summaries). A draft model is
a second, smaller GGUF with the same vocabulary, run greedily on its own context.

Drafts are always deterministic guesses; the target model verifies them by sampling
its own next token at each drafted position and keeping the drafts only while they
agree, so the output has exactly the target model's distribution (see generation).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

from llama_cpp import _internals

from engine.errors import ModelLoadError
from engine.model.loader import LoadedModel

DrafterName = Literal["prompt-lookup", "draft-model"]


class Drafter(Protocol):
    name: DrafterName

    def begin(self, history: Sequence[int]) -> None:
        """A reply starts: ``history`` is the conversation's tokens so far."""

    def extend(self, tokens: Sequence[int]) -> None:
        """Tokens the target model emitted (drafted or its own), in order."""

    def draft(self, cache: Sequence[int], pending: int, n: int) -> list[int]:
        """Up to ``n`` tokens to follow the target's cache and its pending token. May
        return fewer, or none when it has no good guess."""

    def close(self) -> None: ...


class PromptLookup:
    """N-gram lookup over the conversation, indexed as it grows (O(1) per token)."""

    name: DrafterName = "prompt-lookup"

    def __init__(self, min_ngram: int = 2, max_ngram: int = 4) -> None:
        self.min_ngram = min_ngram
        self.max_ngram = max(min_ngram, max_ngram)
        self.tokens: list[int] = []
        self._after: dict[tuple[int, ...], int] = {}
        """n-gram -> index just after its latest occurrence that has a continuation."""
        self._copy: tuple[int, int] | None = None
        """(source index, len(tokens)) when the last draft was made: while the text goes
        on copying that source, the next draft continues from the same place instead of
        jumping to the latest occurrence of a short n-gram (code repeats its n-grams)."""

    def begin(self, history: Sequence[int]) -> None:
        n = len(self.tokens)
        if n <= len(history) and list(history[:n]) == self.tokens:
            self.extend(history[n:])  # the same conversation, grown: index only the new part
            return
        self.tokens, self._after, self._copy = [], {}, None
        self.extend(history)

    def extend(self, tokens: Sequence[int]) -> None:
        for token in tokens:
            i = len(self.tokens)  # the new token's index: it continues the n-grams ending at i-1
            for n in range(self.min_ngram, self.max_ngram + 1):
                if i >= n:
                    self._after[tuple(self.tokens[i - n:i])] = i
            self.tokens.append(token)

    def draft(self, cache: Sequence[int], pending: int, n: int) -> list[int]:
        # ``extend`` has already seen ``pending``: the suffix ends with it. The suffix
        # itself is never indexed (it has no continuation yet), so any hit is an earlier
        # occurrence. Longer matches are tried first: fewer, surer.
        start = self._continued()
        for size in range(self.max_ngram, self.min_ngram - 1, -1):
            if start is not None or len(self.tokens) < size:
                break
            start = self._after.get(tuple(self.tokens[-size:]))
        if start is None:
            self._copy = None
            return []
        self._copy = (start, len(self.tokens))
        # A continuation that runs into the end of the text goes on as the text does
        # there: a match ``period`` tokens back means the last ``period`` tokens repeat
        # (an overlapping copy, as in LZ77), so a loop drafts a full round, not one lap.
        period = len(self.tokens) - start
        return [self.tokens[start + j % period] for j in range(n)]

    def _continued(self) -> int | None:
        """Where the copy in progress goes on, if the tokens since the last draft
        followed its source exactly."""
        if self._copy is None:
            return None
        source, then = self._copy
        here = source + len(self.tokens) - then  # the source position matching the end
        size = self.min_ngram
        if here >= then or here < size or self.tokens[here - size:here] != self.tokens[-size:]:
            return None
        # ``here`` stays before ``then``: a source that reaches into the text copied since
        # would be the text copying itself.
        return here

    def close(self) -> None:
        pass


class DraftModel:
    """A smaller model on its own context, drafting greedily; its cache follows the
    target's window by common prefix, so only what changed is evaluated."""

    name: DrafterName = "draft-model"

    def __init__(self, lm: LoadedModel) -> None:
        self.lm = lm
        self.tokens: list[int] = []  # the draft context's cache, by position
        self.batch = _internals.LlamaBatch(n_tokens=lm.n_batch, embd=0, n_seq_max=1)
        self.sampler = _internals.LlamaSampler()
        self.sampler.add_greedy()

    def begin(self, history: Sequence[int]) -> None:
        pass

    def extend(self, tokens: Sequence[int]) -> None:
        pass

    def draft(self, cache: Sequence[int], pending: int, n: int) -> list[int]:
        window = [*cache, pending]
        n = min(n, self.lm.n_ctx - len(window))
        if n <= 0:
            return []
        self._sync(window)
        out: list[int] = []
        for _ in range(n):
            token = self.sampler.sample(self.lm.ctx, -1)
            out.append(token)
            if self.lm.ends_turn(token) or len(out) == n:
                break
            self._decode([token])
        return out

    def _sync(self, window: Sequence[int]) -> None:
        keep = 0
        limit = min(len(self.tokens), len(window) - 1)  # the last token is always re-decoded
        while keep < limit and self.tokens[keep] == window[keep]:
            keep += 1
        self.lm.ctx.kv_cache_seq_rm(0, keep, -1)
        del self.tokens[keep:]
        for pos in range(keep, len(window), self.lm.n_batch):
            self._decode(list(window[pos:pos + self.lm.n_batch]))

    def _decode(self, tokens: list[int]) -> None:
        self.batch.set_batch(tokens, n_past=len(self.tokens), logits_all=False)
        try:
            self.lm.ctx.decode(self.batch)
        except RuntimeError:
            self.lm.ctx.kv_cache_seq_rm(0, len(self.tokens), -1)
            raise
        self.tokens.extend(tokens)

    def close(self) -> None:
        self.sampler.close()
        self.batch.close()
        self.lm.close()


def check_same_vocab(target: LoadedModel, draft: LoadedModel) -> None:
    """Refuse a draft model whose tokens mean something else: its drafts would be
    nonsense to the target, and token ids beyond the target's vocabulary a crash."""
    t_vocab, d_vocab = target.model.n_vocab(), draft.model.n_vocab()
    name = draft.info.path
    if t_vocab != d_vocab:
        raise ModelLoadError(f"draft model {name} has a different vocabulary: {d_vocab} "
                             f"tokens against the model's {t_vocab}")
    # Every token would take seconds on a 262k vocabulary; a spread sample catches a
    # different tokenizer at once.
    step = max(1, t_vocab // 4096)
    for token in [*range(min(t_vocab, 512)), *range(512, t_vocab, step)]:
        mine, theirs = target.model.token_get_text(token), draft.model.token_get_text(token)
        if mine != theirs:
            raise ModelLoadError(f"draft model {name} has a different vocabulary: token "
                                 f"{token} is {theirs!r} there and {mine!r} in the model")
