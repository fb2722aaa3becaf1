"""``LocalEngine``'s replies when the model holds several sequences (``parallel`` > 1):
every reply goes through one :class:`~engine.batch.decoder.BatchDecoder` on the engine
thread, and each reply's events go to its own channel.

The engine thread steps the decoder while anything is active and picks up new jobs
between two steps (``LocalEngine._serve``), so a reply that arrives while others
stream joins them at the next step. A reply's cancel event is checked before each
step: cancelling one frees its sequence and leaves the others alone. A finished reply's
sequence stays as its conversation's prefix (the decoder's idle sequences), so the next
turn of that conversation evaluates only what is new; ``prompt`` events report it.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from engine.api import ChatRequest
from engine.batch.decoder import BatchDecoder
from engine.config import KVCacheConfig
from engine.decode.kv_cache import KVCache
from engine.errors import KvchatError
from engine.events import Done, Error, Event, TokenChunk
from engine.model.loader import LoadedModel

log = logging.getLogger("kvchat.engine")


@dataclass
class _Route:
    emit: Callable[[Event], None]
    cancel: threading.Event
    index: int | None
    """The reply's number among N answers (0..n-1), None for a plain reply."""
    text: str
    """The rendered prompt, and its tokens: with the reply, what the conversation's
    next turn extends."""
    tokens: list[int]
    reply: list[int]


class BatchRunner:
    def __init__(self, lm: LoadedModel, n_seq: int, policy: KVCacheConfig) -> None:
        self.lm = lm
        self.decoder = BatchDecoder(lm, n_seq, discard_fraction=policy.discard_fraction)
        self._kept = KVCache(lm, policy)  # counts a conversation's kept prefix only
        self._routes: dict[int, _Route] = {}
        self._said: OrderedDict[str, list[int]] = OrderedDict()
        """Finished conversations as rendered (prompt and reply) and their tokens as
        the model saw them, newest last: a next turn's prompt extends one, and keeps
        those tokens (tokenizing the reply's text again may split it otherwise), so it
        matches the idle sequence's cells to the end of the reply."""
        self._said_max = 4 * n_seq

    @property
    def busy(self) -> bool:
        return self.decoder.busy

    def join(self, req: ChatRequest, emit: Callable[[Event], None], cancel: threading.Event,
             n: int = 1) -> None:
        """Queue ``n`` replies to ``req``; their events go to ``emit``, tagged 0..n-1
        when ``n`` > 1."""
        assert req.sampling is not None
        try:
            text = self.lm.chat_format.render(req.messages)
            tokens = self.tokens_for(text)
            if fallback := self.lm.chat_format.take_fallback():
                emit(fallback)
            ids = self.decoder.add(tokens, req.sampling, n=n, ignore_eos=req.ignore_eos,
                                   grammar=req.constraint,
                                   n_keep=self._kept.count_kept(req.messages, tokens))
        except KvchatError as exc:
            for k in range(n):
                emit(Error(code=exc.code, message=exc.message, reply=k if n > 1 else None))
            return
        for k, reply in enumerate(ids):
            self._routes[reply] = _Route(emit, cancel, k if n > 1 else None, text, tokens, [])
        self._deliver(self.decoder.take_events())  # a place in the queue, at once

    def tokens_for(self, text: str) -> list[int]:
        """The prompt's tokens: those of the finished conversation it extends, then
        the new text's; else the whole text tokenized."""
        for said in reversed(self._said):
            if text.startswith(said):
                self._said.move_to_end(said)
                return self._said[said] + self.lm.tokenize(text[len(said):], add_bos=False)
        tokens = self.lm.tokenize(text, add_bos=True)
        if len(tokens) > 1 and tokens[0] == tokens[1] == self.lm.bos:
            tokens = tokens[1:]  # the template wrote the BOS and the tokenizer added one
        return tokens

    def step(self) -> None:
        for reply, route in list(self._routes.items()):
            if route.cancel.is_set():
                self.decoder.cancel(reply)
        try:
            events = self.decoder.step()
        except KvchatError as exc:
            log.warning("batch decode failed: %s", exc.message)
            events = self.decoder.fail(exc)
        self._deliver(events)

    def cancel_all(self) -> None:
        for route in self._routes.values():
            route.cancel.set()

    def _deliver(self, events: list[Event]) -> None:
        for event in events:
            reply = getattr(event, "reply", None)
            route = self._routes.get(reply) if reply is not None else None
            if route is None:
                continue
            route.emit(event.model_copy(update={"reply": route.index}))
            if isinstance(event, TokenChunk):
                route.reply += event.token_ids
            elif isinstance(event, Done | Error):
                del self._routes[reply]
                if isinstance(event, Done) and route.index is None:
                    self.remember(route.text + event.text, route.tokens + route.reply)

    def remember(self, text: str, tokens: list[int]) -> None:
        self._said[text] = tokens
        self._said.move_to_end(text)
        while len(self._said) > self._said_max:
            self._said.popitem(last=False)

    def close(self) -> None:
        """Every reply still open ends cancelled; the decoder lets go of its cells."""
        for reply in list(self._routes):
            self.decoder.cancel(reply)
        self._deliver(self.decoder.take_events())
        self.decoder.close()
