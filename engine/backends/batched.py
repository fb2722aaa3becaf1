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
from collections.abc import Callable
from dataclasses import dataclass

from engine.api import ChatRequest
from engine.batch.decoder import BatchDecoder
from engine.config import KVCacheConfig
from engine.decode.kv_cache import KVCache
from engine.errors import KvchatError
from engine.events import Done, Error, Event
from engine.model.loader import LoadedModel

log = logging.getLogger("kvchat.engine")


@dataclass
class _Route:
    emit: Callable[[Event], None]
    cancel: threading.Event
    index: int | None
    """The reply's number among N answers (0..n-1), None for a plain reply."""


class BatchRunner:
    def __init__(self, lm: LoadedModel, n_seq: int, policy: KVCacheConfig) -> None:
        self.lm = lm
        self.decoder = BatchDecoder(lm, n_seq, discard_fraction=policy.discard_fraction)
        self._kept = KVCache(lm, policy)  # counts a conversation's kept prefix only
        self._routes: dict[int, _Route] = {}

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
            tokens = self.lm.tokenize(text, add_bos=True)
            if len(tokens) > 1 and tokens[0] == tokens[1] == self.lm.bos:
                tokens = tokens[1:]  # the template wrote the BOS and the tokenizer added one
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
            self._routes[reply] = _Route(emit, cancel, k if n > 1 else None)
        self._deliver(self.decoder.take_events())  # a place in the queue, at once

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
            if isinstance(event, Done | Error):
                del self._routes[reply]

    def close(self) -> None:
        """Every reply still open ends cancelled; the decoder lets go of its cells."""
        for reply in list(self._routes):
            self.decoder.cancel(reply)
        self._deliver(self.decoder.take_events())
        self.decoder.close()
