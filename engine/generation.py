"""The token loop: prefill what is new, then sample and decode one token at a time.

Runs on the engine thread only. ``KVState.tokens`` is the truth about the KV cache of
sequence 0: position ``i`` holds ``tokens[i]``. Every path out of a turn, including a
failed decode or a cancel, leaves the two in step (see ``rewind``).
"""

from __future__ import annotations

import codecs
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from llama_cpp import _internals

from engine.chat_format import ChatMessage
from engine.config import SamplingConfig
from engine.errors import DecodeError
from engine.events import (
    Done,
    Error,
    Event,
    FinishReason,
    KVUsage,
    Progress,
    PromptEvaluated,
    TokenChunk,
)
from engine.loader import LoadedModel
from engine.sampling import build_sampler

SEQ = 0
PROGRESS_EVERY = 16
"""Tokens between progress and kv events while a reply streams."""


@dataclass(frozen=True)
class ChatRequest:
    messages: Sequence[ChatMessage]
    sampling: SamplingConfig
    ignore_eos: bool = False
    """Ban end-of-turn tokens and generate exactly ``max_tokens`` (for benchmarks)."""


@dataclass
class KVState:
    tokens: list[int] = field(default_factory=list)
    """Tokens in the cache, by position."""
    rendered_text: str = ""
    """Prompt + reply text of the last turn, and its tokens as the model saw them:
    the next turn's prompt extends this text, so its tokens extend these exactly."""
    rendered_tokens: list[int] = field(default_factory=list)


@dataclass
class TurnStats:
    started: float
    prompt_tokens: int = 0
    reused_tokens: int = 0
    evaluated_tokens: int = 0
    prefill_s: float = 0.0
    first_token_at: float = 0.0
    last_token_at: float = 0.0
    sampled: int = 0
    """Tokens sampled, counting a final end-of-turn token that is not part of the reply."""
    completion_tokens: int = 0


class Generator:
    """Owns the batch and the cache bookkeeping for one loaded model."""

    def __init__(self, lm: LoadedModel) -> None:
        self.lm = lm
        self.kv = KVState()
        self.batch = _internals.LlamaBatch(n_tokens=lm.n_batch, embd=0, n_seq_max=1)

    def close(self) -> None:
        self.batch.close()

    # -- prompt -------------------------------------------------------------------

    def tokenize_prompt(self, messages: Sequence[ChatMessage]) -> tuple[str, list[int]]:
        text = self.lm.chat_format.render(messages)
        kv = self.kv
        if kv.rendered_text and text.startswith(kv.rendered_text):
            # Extend the last turn's tokens so the reply keeps the tokens it was
            # generated as (re-tokenizing its text may split it differently).
            suffix = text[len(kv.rendered_text):]
            return text, kv.rendered_tokens + self.lm.tokenize(suffix, add_bos=False)
        tokens = self.lm.tokenize(text, add_bos=True)
        if len(tokens) > 1 and tokens[0] == tokens[1] == self.lm.bos:
            tokens = tokens[1:]  # template wrote the BOS text and the tokenizer added one
        return text, tokens

    def prefill(self, prompt: list[int], cancel: threading.Event) -> tuple[int, int]:
        """Make the cache hold ``prompt``, evaluating only what it lacks.

        Returns (reused, evaluated). At least the last prompt token is evaluated so
        its logits are fresh for the first sample.
        """
        reused = _common_prefix(self.kv.tokens, prompt)
        reused = min(reused, len(prompt) - 1)
        self.rewind(reused)
        pos = reused
        while pos < len(prompt):
            if cancel.is_set():
                break
            chunk = prompt[pos : pos + self.lm.n_batch]
            # positions pos..pos+len(chunk)-1; logits only for the chunk's last token
            self.decode(chunk)
            pos += len(chunk)
        return reused, pos - reused

    # -- cache --------------------------------------------------------------------

    def decode(self, tokens: list[int]) -> None:
        """Evaluate ``tokens`` at the next positions and append them to the cache."""
        n_past = len(self.kv.tokens)
        self.batch.set_batch(tokens, n_past=n_past, logits_all=False)
        try:
            self.lm.ctx.decode(self.batch)
        except RuntimeError as exc:
            raise DecodeError(f"llama.cpp could not evaluate {len(tokens)} tokens "
                              f"at position {n_past}: {exc}") from None
        self.kv.tokens.extend(tokens)

    def rewind(self, n_keep: int) -> None:
        """Drop every cached position from ``n_keep`` on."""
        if n_keep < len(self.kv.tokens):
            self.lm.ctx.kv_cache_seq_rm(SEQ, n_keep, -1)
            del self.kv.tokens[n_keep:]

    def sync_after_failure(self) -> None:
        """``decode`` records tokens only once llama.cpp took them, so a failed batch may
        have left cells past ``kv.tokens``: drop them, and the rendered prefix too."""
        self.lm.ctx.kv_cache_seq_rm(SEQ, len(self.kv.tokens), -1)
        self.kv.rendered_text, self.kv.rendered_tokens = "", []

    def kv_usage(self, reserved: int) -> KVUsage:
        used, n_ctx, per = len(self.kv.tokens), self.lm.n_ctx, self.lm.bytes_per_cell
        return KVUsage(used_cells=used, reserved_cells=reserved, n_ctx=n_ctx,
                       bytes_per_cell=per, used_bytes=used * per, total_bytes=n_ctx * per)

    # -- the turn -----------------------------------------------------------------

    def run(self, req: ChatRequest, emit: Callable[[Event], None],
            cancel: threading.Event) -> None:
        stats = TurnStats(started=time.perf_counter())
        text, prompt = self.tokenize_prompt(req.messages)
        n_ctx = self.lm.n_ctx
        if len(prompt) >= n_ctx:
            emit(Error(code="prompt_too_long",
                       message=f"the conversation is {len(prompt)} tokens; the context holds "
                               f"{n_ctx} (raise --ctx or start a new conversation)"))
            return
        stats.prompt_tokens = len(prompt)
        ok = False
        try:
            stats.reused_tokens, stats.evaluated_tokens = self.prefill(prompt, cancel)
            stats.prefill_s = time.perf_counter() - stats.started
            if cancel.is_set():
                emit(self._done(stats, "cancelled", ""))
                ok = True
                return
            emit(PromptEvaluated(prompt_tokens=stats.prompt_tokens,
                                 reused_tokens=stats.reused_tokens,
                                 evaluated_tokens=stats.evaluated_tokens,
                                 prefill_s=stats.prefill_s))
            reserved = min(req.sampling.max_tokens, n_ctx - len(prompt))
            emit(self.kv_usage(reserved))
            reply_tokens, reason = self.generate(req, emit, cancel, stats)
            reply = b"".join(map(self.lm.token_piece, reply_tokens)).decode("utf-8", "replace")
            self.kv.rendered_text = text + reply
            self.kv.rendered_tokens = prompt + reply_tokens
            emit(self.kv_usage(0))
            emit(self._done(stats, reason, reply))
            ok = True
        finally:
            if not ok:
                self.sync_after_failure()

    def generate(self, req: ChatRequest, emit: Callable[[Event], None],
                 cancel: threading.Event, stats: TurnStats) -> tuple[list[int], FinishReason]:
        """Sample until end of turn, max_tokens, cancel or a full cache."""
        sampling = req.sampling
        banned = self.lm.eog_tokens() if req.ignore_eos else None
        sampler, _seed = build_sampler(sampling, self.lm.model.n_vocab(), banned)
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        reply: list[int] = []
        try:
            while True:
                if cancel.is_set():
                    return reply, "cancelled"
                token = sampler.sample(self.lm.ctx, -1)  # logits of the last decoded token
                sampler.accept(token)
                now = time.perf_counter()
                if not stats.first_token_at:
                    stats.first_token_at = now
                stats.last_token_at = now
                stats.sampled += 1
                if self.lm.ends_turn(token) and not req.ignore_eos:
                    return reply, "stop"
                reply.append(token)
                stats.completion_tokens = len(reply)
                piece = utf8.decode(self.lm.token_piece(token))
                emit(TokenChunk(text=piece, token_ids=[token]))
                if len(reply) % PROGRESS_EVERY == 0:
                    span = stats.last_token_at - stats.first_token_at
                    emit(Progress(completion_tokens=len(reply),
                                  tokens_per_s=(stats.sampled - 1) / span if span else 0.0))
                    emit(self.kv_usage(min(sampling.max_tokens - len(reply),
                                           self.lm.n_ctx - len(self.kv.tokens))))
                if len(reply) >= sampling.max_tokens:
                    return reply, "length"
                if len(self.kv.tokens) + 1 > self.lm.n_ctx:
                    return reply, "context_full"
                self.decode([token])  # position len(kv.tokens); its logits feed the next sample
        finally:
            sampler.close()

    def _done(self, stats: TurnStats, reason: FinishReason, text: str) -> Done:
        end = time.perf_counter()
        decode_span = stats.last_token_at - stats.first_token_at
        # The first sample reads the prefill's logits; each later one costs one decode.
        decoded = max(0, stats.sampled - 1)
        prefill_rate = stats.evaluated_tokens / stats.prefill_s if stats.prefill_s else 0.0
        return Done(
            finish_reason=reason,
            prompt_tokens=stats.prompt_tokens,
            reused_tokens=stats.reused_tokens,
            evaluated_tokens=stats.evaluated_tokens,
            completion_tokens=stats.completion_tokens,
            ttft_s=(stats.first_token_at or end) - stats.started,
            prefill_tokens_per_s=prefill_rate,
            tokens_per_s=decoded / decode_span if decode_span > 0 else 0.0,
            total_s=end - stats.started,
            text=text,
        )


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
