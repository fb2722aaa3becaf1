"""``LocalEngine``'s replies when the model holds several sequences (``parallel`` > 1):
every reply goes through one :class:`~engine.batch.decoder.BatchDecoder` on the engine
thread, and each reply's events go to its own channel.

The engine thread steps the decoder while anything is active and picks up new jobs
between two steps (``LocalEngine._serve``), so a reply that arrives while others
stream joins them at the next step. A reply's cancel event is checked before each
step: cancelling one frees its sequence and leaves the others alone. A finished reply's
sequence stays as its conversation's prefix (the decoder's idle sequences), so the next
turn of that conversation evaluates only what is new; ``prompt`` events report it.

Each reply's ``context`` events (``engine.decode.context_map``) come from its slot's
window: after each of its evictions and before its ``done``, as on the single-sequence
path; a prompt cut into the turn's own message is reported (``prompt_truncated``) as
there. A conversation's record of evictions goes on with its next turn while that turn
takes over its idle sequence.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from engine.api import ChatMessage, ChatRequest
from engine.batch.decoder import BatchDecoder
from engine.batch.slots import Slot
from engine.cache.pool import StateCache
from engine.config import KVCacheConfig, SpeculativeConfig
from engine.decode.context_map import (
    Evicted,
    MessageSpans,
    context_map,
    logical_span,
    with_earlier,
)
from engine.decode.kv_cache import KVCache, Prompt
from engine.errors import KvchatError
from engine.events import (
    ContextMap,
    Done,
    Error,
    Event,
    Eviction,
    PromptEvaluated,
    PromptTruncated,
    TokenChunk,
)
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
    slot: Slot | None = None
    """The decoder's record of the reply: its window's bookkeeping."""
    messages: list[ChatMessage] = field(default_factory=list)
    carried: list[Evicted] = field(default_factory=list)
    """The conversation's evictions before this turn, as its last turn left them."""
    evicted: list[Evicted] = field(default_factory=list)
    """This turn's evictions, in logical positions."""
    cut: int = 0
    due: bool = False
    """A prompt eviction's map waits for the prompt to be read."""
    where: MessageSpans | None = None


class BatchRunner:
    def __init__(self, lm: LoadedModel, n_seq: int, policy: KVCacheConfig,
                 speculative: SpeculativeConfig | None = None,
                 states: StateCache | None = None, overlap: bool = False) -> None:
        self.lm = lm
        self.overlap = overlap
        """Hand a step's events over while the next step's decode runs: where the
        output layer is on a GPU, ``llama_decode`` returns before its graph has run.
        On a CPU it returns when done, and holding events would only delay them."""
        self._held: list[Event] = []
        self.decoder = BatchDecoder(lm, n_seq, discard_fraction=policy.discard_fraction,
                                    speculative=speculative, states=states, policy=policy)
        self._kept = KVCache(lm, policy)  # counts a conversation's kept prefix only
        self._routes: dict[int, _Route] = {}
        self._said: OrderedDict[str, tuple[list[int], list[Evicted]]] = OrderedDict()
        """Finished conversations as rendered (prompt and reply), their tokens as the
        model saw them and what their window had evicted, newest last: a next turn's
        prompt extends one, and keeps those tokens (tokenizing the reply's text again
        may split it otherwise), so it matches the idle sequence's cells to the end of
        the reply."""
        self._pieces: dict[int, bytes] = {}  # token pieces, for every reply's context map
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
            tokens, carried = self.tokens_for(text)
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
            self._routes[reply] = _Route(emit, cancel, k if n > 1 else None, text, tokens, [],
                                         self.decoder.slots.get(reply), list(req.messages),
                                         list(carried))
        self._deliver(self.decoder.take_events())  # a place in the queue, at once

    def tokens_for(self, text: str) -> tuple[list[int], list[Evicted]]:
        """The prompt's tokens: those of the finished conversation it extends, then
        the new text's; else the whole text tokenized. With what the conversation's
        window had evicted."""
        for said in reversed(self._said):
            if text.startswith(said):
                self._said.move_to_end(said)
                before, evicted = self._said[said]
                return before + self.lm.tokenize(text[len(said):], add_bos=False), evicted
        tokens = self.lm.tokenize(text, add_bos=True)
        if len(tokens) > 1 and tokens[0] == tokens[1] == self.lm.bos:
            tokens = tokens[1:]  # the template wrote the BOS and the tokenizer added one
        return tokens, []

    def step(self) -> None:
        for reply, route in list(self._routes.items()):
            if route.cancel.is_set():
                self.decoder.cancel(reply)
        held, self._held = self._held, []
        try:
            self.decoder.launch()
            self._deliver(held)  # the last step's tokens, while this step's decode runs
            held = []
            events = self.decoder.collect()
        except KvchatError as exc:
            log.warning("batch decode failed: %s", exc.message)
            events = held + self.decoder.fail(exc)
        if self.overlap and self.decoder.busy:
            self._held = events
        else:
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
            if isinstance(event, Eviction) and event.reason == "prompt":
                self._cut(route, event)
            if isinstance(event, Done) and (end := self._reply_map(route, event)):
                route.emit(end)
            route.emit(event.model_copy(update={"reply": route.index}))
            if isinstance(event, TokenChunk):
                route.reply += event.token_ids
            elif isinstance(event, Eviction | PromptEvaluated):
                self._mapped(route, event)
            elif isinstance(event, Done | Error):
                del self._routes[reply]
                if isinstance(event, Done) and route.index is None:
                    record = self._record(route, route.slot) if route.slot else []
                    self.remember(route.text + event.text, route.tokens + route.reply,
                                  record)

    # -- the context map --------------------------------------------------------------

    def _mapped(self, route: _Route, event: Eviction | PromptEvaluated) -> None:
        """The map after an eviction. A prompt's is sent once the prompt is read (its
        eviction comes as the reply is placed, before any of it is): the window holds
        the prompt then, as on the single-sequence path, whose map follows the decode
        that applies the eviction. A reply's own holds every token sent before it."""
        if isinstance(event, Eviction):
            route.evicted.append(logical_span(event))
            route.due = event.reason == "prompt"
            if route.due:
                return
        elif not route.due:
            return
        route.due = False
        if route.slot is not None:
            route.emit(self._map(route, route.slot, len(route.tokens) + len(route.reply)))

    def _record(self, route: _Route, slot: Slot) -> list[Evicted]:
        """Every token the reply's window dropped, with its eviction's reason: the
        conversation's earlier record when this turn went on in its window."""
        n_keep, record = slot.group.n_keep, route.carried + route.evicted
        if route.carried and not (route.carried[0][0] == n_keep and sum(
                e - s for s, e, _ in record) == slot.dropped):
            record = route.evicted  # its window was not kept: placed anew
        return with_earlier(record, n_keep, slot.dropped)

    def _map(self, route: _Route, slot: Slot, end: int) -> ContextMap:
        """The reply's map, from its slot's window (kept prefix, tokens dropped) and the
        logical position ``end`` its cells reach."""
        event = context_map(route.messages, self._where(route).spans(), len(route.tokens),
                            len(route.reply), n_keep=slot.group.n_keep, cells_end=end,
                            evicted=self._record(route, slot), cut=route.cut)
        return event.model_copy(update={"reply": route.index})

    def _where(self, route: _Route) -> MessageSpans:
        if route.where is None:
            route.where = MessageSpans(self._kept, self._pieces)
            route.where.begin(route.messages, Prompt(route.text, route.tokens, 0))
        return route.where

    def _reply_map(self, route: _Route, done: Done) -> ContextMap | None:
        """The map as the reply ends, once its prompt was read. The cells hold the
        prompt and the reply but for its last token when it was sampled and not
        decoded (any end but an end of turn, which is not part of the reply)."""
        slot = route.slot
        if slot is None or not slot.stats.first_token_at:
            return None
        undecoded = 1 if done.finish_reason != "stop" and route.reply else 0
        return self._map(route, slot, len(route.tokens) + len(route.reply) - undecoded)

    def _cut(self, route: _Route, ev: Eviction) -> None:
        """A prompt eviction that reached into the turn's own message: said, as the
        single-sequence path says it. The message starts at its text: the end of the
        turn before it and its header are history."""
        if route.slot is None or not route.messages:
            return
        own = self._where(route).spans()[-1][0]
        cut = ev.kept_tokens + ev.evicted_total - max(own, ev.kept_tokens)
        if cut <= 0:
            return
        route.cut = cut
        added, window = len(route.tokens) - own, self.decoder.window
        reserve = window - route.slot.group.room
        route.emit(PromptTruncated(
            message_tokens=added, cut_tokens=cut, n_ctx=window,
            message=f"the message is {added} tokens and the context holds {window} with "
                    f"{reserve} kept for the reply: its first {cut} tokens were cut"))

    def remember(self, text: str, tokens: list[int], evicted: list[Evicted]) -> None:
        self._said[text] = (tokens, evicted)
        self._said.move_to_end(text)
        while len(self._said) > self._said_max:
            self._said.popitem(last=False)

    def close(self) -> None:
        """Every reply still open ends cancelled; the decoder lets go of its cells."""
        for reply in list(self._routes):
            self.decoder.cancel(reply)
        held, self._held = self._held, []
        self._deliver(held + self.decoder.take_events())
        self.decoder.close()
