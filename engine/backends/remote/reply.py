"""One streamed reply from a server, and the ``Done`` it adds up to.

Counts come from what the server reported at the end: the OpenAI ``usage`` fields
(prompt, completion, cached prompt tokens) and llama-server's ``timings`` (prompt
tokens evaluated and reused, decode rate, drafted and accepted tokens). Where neither
says, the count is the streamed chunks (one token each on llama.cpp servers) and the
prompt estimate, and ``Done.token_count`` says ``estimate``; fields no estimate can
stand in for (cache reuse, drafts) stay None.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from engine.backends.remote.wire import Chunk
from engine.events import Done, FinishReason


@dataclass
class StreamedReply:
    started: float
    """perf_counter when the request was sent."""
    prompt_estimate: tuple[int, str]
    """Tokens the prompt is estimated to take, and how that was counted."""
    parts: list[str] = field(default_factory=list)
    chunks: int = 0
    """Chunks that carried text."""
    first_at: float | None = None
    last_at: float | None = None
    finish: str | None = None
    """The server's finish_reason, once a chunk carried one."""
    report: Chunk | None = None
    """The last chunk that carried usage or timings."""

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def add(self, text: str, now: float) -> None:
        if self.first_at is None:
            self.first_at = now
        self.last_at = now
        self.chunks += 1
        self.parts.append(text)

    def rate(self) -> float:
        """Chunks per second after the first, as they arrived here."""
        if self.first_at is None or self.last_at is None or self.chunks < 2:
            return 0.0
        span = self.last_at - self.first_at
        return (self.chunks - 1) / span if span > 0 else 0.0

    def done(self, reason: FinishReason) -> Done:
        usage = self.report.usage if self.report is not None else None
        timings = self.report.timings if self.report is not None else None
        prompt = completion = cached = evaluated = None
        if usage is not None:
            prompt, completion = usage.prompt_tokens, usage.completion_tokens
            if usage.prompt_tokens_details is not None:
                cached = usage.prompt_tokens_details.cached_tokens
        if timings is not None:
            cached = timings.cache_n if timings.cache_n is not None else cached
            evaluated = timings.prompt_n
            if prompt is None and timings.prompt_n is not None and timings.cache_n is not None:
                prompt = timings.prompt_n + timings.cache_n
            if completion is None:
                completion = timings.predicted_n
        if evaluated is None and prompt is not None and cached is not None:
            evaluated = prompt - cached
        reported = prompt is not None and completion is not None
        now = time.perf_counter()
        rate = timings.predicted_per_second if timings is not None else None
        return Done(
            finish_reason=reason,
            prompt_tokens=prompt if prompt is not None else self.prompt_estimate[0],
            reused_tokens=cached, evaluated_tokens=evaluated,
            completion_tokens=completion if completion is not None else self.chunks,
            ttft_s=round((self.first_at or now) - self.started, 4),
            prefill_tokens_per_s=timings.prompt_per_second if timings is not None else None,
            tokens_per_s=round(rate if rate is not None else self.rate(), 2),
            total_s=round(now - self.started, 4),
            drafted_tokens=timings.draft_n if timings is not None else None,
            accepted_tokens=timings.draft_n_accepted if timings is not None else None,
            text=self.text, token_count="server" if reported else "estimate")
