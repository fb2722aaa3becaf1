"""A conversation over an engine, recorded in the store as it happens.

The user's message is committed before generation starts; the reply's row exists
from its first moment (status ``streaming``) and its text is saved every
``save_every_s`` seconds, so a process killed mid-reply loses at most the last few
tokens, and the conversation opens again with that reply marked ``interrupted``.
Both UIs (the TUI and ``kvchat ask``) talk to the engine through this class.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from engine.api import ChatEngine, ChatMessage, ChatRequest
from engine.config import KvchatConfig, SamplingConfig
from engine.events import Done, Error, Event, Retry, TokenChunk, TurnStarted
from engine.routing.service import DEFAULT_N_CTX, RoutedTurn, RouteError, RouteService
from engine.routing.templates import with_instructions
from engine.store import MessageRow, Parent, Store, title_from_prompt
from engine.structured.ladder import (
    DEFAULT_POLICY,
    Attempt,
    Ladder,
    Step,
    format_instructions,
    run_ladder,
)
from engine.structured.spec import OutputSpec


@dataclass
class _Turn:
    """One message stored and on its way: what each attempt is built from, and how
    the reply is doing."""

    conversation_id: int
    user_id: int
    reply_id: int
    routed: RoutedTurn | None
    ladder: Ladder | None
    history: list[ChatMessage]
    """The conversation before this message, as the model sees it."""
    model_text: str
    """The message as the model gets it (with the route's instructions)."""
    sampling: SamplingConfig | None
    ignore_eos: bool
    user_stats: dict[str, Any]
    prompt_change: str
    """The instructions the last attempt sent added to the message: what the KV cache
    now holds (the ladder's base change until an attempt sends another)."""
    parts: list[str] = field(default_factory=list)
    """The text of the attempt in flight."""
    last_save: float = 0.0
    final: Done | Error | None = None
    cancel: threading.Event | None = None
    """Stops this reply alone (``ChatEngine.stream``); None: only ``engine.cancel()``."""


class ChatSession:
    def __init__(self, engine: ChatEngine, store: Store, system_prompt: str = "",
                 save_every_s: float = 1.0, routes: RouteService | None = None) -> None:
        self.engine = engine
        self.store = store
        self.system_prompt = system_prompt
        self.save_every_s = save_every_s
        self.routes = routes
        """Routes each message to a template; None sends messages as they are."""

    @classmethod
    def for_config(cls, engine: ChatEngine, store: Store, config: KvchatConfig,
                   routes: RouteService | None = None) -> ChatSession:
        """A session as the app holds one: the config's system prompt, and ``routes`` or
        else the bundled route templates with the user's beside them."""
        return cls(engine, store, config.chat.system_prompt,
                   routes=routes or RouteService.from_config(config))

    @property
    def route_names(self) -> list[str]:
        """The routes a message can be sent through, sorted (none without routing)."""
        return sorted(self.routes.templates.templates) if self.routes else []

    @property
    def route_problems(self) -> list[str]:
        """One line per user template that could not be loaded and was skipped."""
        return list(self.routes.templates.problems) if self.routes else []

    def check_route(self, name: str) -> str:
        """``name`` when it is a route here; RouteError naming the routes otherwise."""
        if self.routes is None:
            raise RouteError(f"no routes here: {name!r} cannot be chosen")
        return self.routes.check_route(name)

    def history(self, conversation_id: int) -> list[ChatMessage]:
        """The messages the model sees: the system prompt, then every user message that
        was answered and every reply with text."""
        return self._context(self.store.messages(conversation_id))

    def _context(self, rows: list[MessageRow]) -> list[ChatMessage]:
        messages = [ChatMessage(role="system", content=self.system_prompt)] \
            if self.system_prompt else []
        for row in rows:
            if _in_context(row):
                # A routed turn is rebuilt exactly as the model saw it, so this turn's
                # rendered prompt extends the last one's and the KV cache is reused.
                stats = (row.stats or {}) if row.role == "user" else {}
                content = with_suffix(with_instructions(row.content,
                                                        stats.get("instructions", "")),
                                      stats.get("format_instructions", ""))
                messages.append(ChatMessage(role=row.role, content=content))
        return messages

    def last_route(self, conversation_id: int) -> str | None:
        """The route of the conversation's last routed user message."""
        for row in reversed(self.store.messages(conversation_id)):
            if row.role == "user" and row.stats and "route" in row.stats:
                return str(row.stats["route"])
        return None

    async def send(self, text: str, conversation_id: int | None = None,
                   sampling: SamplingConfig | None = None, *,
                   ignore_eos: bool = False, route: str | None = None,
                   pinned: Iterable[str] = (), output: OutputSpec | None = None,
                   cancel: threading.Event | None = None) -> AsyncIterator[Event]:
        """Store ``text``, route it, stream the reply's events, and store the reply.

        ``route`` overrides the router for this message; ``pinned`` names sampling
        fields the user set explicitly, which the route's template must not change.
        ``output`` asks for a structured reply (``--format``/``--schema``); otherwise
        the route's template says whether the reply is checked. A structured reply
        runs the retry ladder: its attempts stream one after another, each followed
        by an ``output_check`` event, each retry announced by a ``retry`` event, and
        one final ``done``. Every attempt is stored for review. Setting ``cancel``
        stops this reply alone (others streaming at once go on).
        Raises PromptError and RouteError (before anything is stored) and
        ConversationNotFound.
        """
        routed = await self._route(text, conversation_id, sampling, route, pinned)
        turn = self._open(text, conversation_id, routed, _ladder_for(output, routed),
                          routed.sampling if routed else sampling, ignore_eos)
        turn.cancel = cancel
        async with aclosing(self._stream(turn)) as events:
            async for event in events:
                yield event

    async def edit(self, message_id: int, text: str, sampling: SamplingConfig | None = None,
                   *, ignore_eos: bool = False, route: str | None = None,
                   pinned: Iterable[str] = (), output: OutputSpec | None = None,
                   cancel: threading.Event | None = None) -> AsyncIterator[Event]:
        """``text`` as a new version of the user message ``message_id``: a sibling of
        it, answered as :meth:`send` answers. The model sees the path before that
        message, which the KV cache already holds. Raises as :meth:`send` does, and
        MessageNotFound or BranchError (a reply cannot be edited)."""
        edited = self.store.editable(message_id)
        cid = edited.conversation_id
        routed = await self._route(text, cid, sampling, route, pinned)
        turn = self._open(text, cid, routed, _ladder_for(output, routed),
                          routed.sampling if routed else sampling, ignore_eos,
                          parent=edited.parent_id)
        turn.cancel = cancel
        async with aclosing(self._stream(turn)) as events:
            async for event in events:
                yield event

    async def regenerate(self, conversation_id: int, sampling: SamplingConfig | None = None,
                         *, ignore_eos: bool = False, pinned: Iterable[str] = (),
                         output: OutputSpec | None = None,
                         cancel: threading.Event | None = None) -> AsyncIterator[Event]:
        """A new reply to the last user message of the path shown, beside the old
        reply, which is kept. The message goes to the model as it went the first time
        (its route, its instructions), so the prompt is the cached one up to the old
        reply. Raises ConversationNotFound, and BranchError when there is no user
        message to answer."""
        user = self.store.to_answer_again(conversation_id)
        route = (user.stats or {}).get("route")
        routed = await self._route(user.content, conversation_id, sampling,
                                   route if route in self.route_names else None, pinned)
        turn = self._reopen(user, routed, _ladder_for(output, routed),
                            routed.sampling if routed else sampling, ignore_eos)
        turn.cancel = cancel
        async with aclosing(self._stream(turn)) as events:
            async for event in events:
                yield event

    async def answers(self, text: str | None, conversation_id: int | None, n: int,
                      sampling: SamplingConfig | None = None, *, ignore_eos: bool = False,
                      cancel: threading.Event | None = None) -> AsyncIterator[Event]:
        """``n`` answers to ``text`` (None: to the last user message shown, as
        :meth:`regenerate`) from one evaluation of the prompt (``ChatEngine.answers``),
        not routed or checked. The message is stored, then ``n`` sibling replies, each
        announced by a ``turn_started`` with its ``reply`` number and stored as it ends;
        the first is shown until :meth:`keep_answer`. Raises as :meth:`regenerate` and
        ``ChatEngine.answers`` do, before anything is stored."""
        old = None if text is not None else self.store.to_answer_again(conversation_id or 0)
        user = ChatMessage(role="user", content=(text or "") if old is None else with_instructions(
            old.content, (old.stats or {}).get("instructions", "")))
        history = self.history(conversation_id) if old is None and conversation_id else \
            self._context(self.store.path_to(old.parent_id) if old and old.parent_id else [])
        events = self.engine.answers(ChatRequest(messages=(*history, user), sampling=sampling,
                                                 ignore_eos=ignore_eos), n, cancel)
        if old is None:
            turn = self._open(user.content, conversation_id, None, None, sampling, ignore_eos)
        else:
            turn = self._reopen(old, None, None, sampling, ignore_eos)
        ids = [turn.reply_id] + [self.store.add_message(
            turn.conversation_id, "assistant", "", status="streaming",
            parent_id=turn.user_id) for _ in range(n - 1)]
        self.store.set_active(turn.conversation_id, ids[0])
        for k, reply_id in enumerate(ids):
            yield TurnStarted(conversation_id=turn.conversation_id, reply=k,
                              user_message_id=turn.user_id, reply_message_id=reply_id)
        parts: dict[int, list[str]] = {k: [] for k in range(n)}
        try:
            async for event in events:
                k = getattr(event, "reply", None)
                if isinstance(event, TokenChunk) and k in parts:
                    parts[k].append(event.text)
                elif isinstance(event, Done | Error):  # one of no answer ends them all
                    for j in [k] if k in parts else list(parts):
                        self._finish(turn.user_id, ids[j], "".join(parts.pop(j)), event)
                yield event
        finally:
            for j, done in parts.items():
                self._finish(turn.user_id, ids[j], "".join(done), None)

    def keep_answer(self, conversation_id: int, reply_id: int) -> None:
        """The answer shown and continued; the others stay as its versions."""
        self.store.set_active(conversation_id, reply_id)

    async def _stream(self, turn: _Turn) -> AsyncIterator[Event]:
        """A stored turn's events, from ``turn_started`` to its end, the reply saved as
        it streams and its end stored however the stream stops."""
        yield TurnStarted(conversation_id=turn.conversation_id, user_message_id=turn.user_id,
                          reply_message_id=turn.reply_id)
        if turn.routed is not None:
            yield turn.routed.event
        events = self._events(turn)
        turn.last_save = time.monotonic()
        try:
            async for event in events:
                self._follow(turn, event)
                yield event
        finally:
            self._close(turn)

    async def _route(self, text: str, conversation_id: int | None,
                     sampling: SamplingConfig | None, route: str | None,
                     pinned: Iterable[str]) -> RoutedTurn | None:
        """Check the message and pick its route (None without a router); nothing is
        stored yet."""
        ChatMessage(role="user", content=text)  # PromptError for a prompt that cannot go
        if route is not None and self.routes is not None:
            self.routes.check_route(route)
        if conversation_id is not None:
            self.store.get_conversation(conversation_id)  # raises ConversationNotFound
        if self.routes is None:
            return None
        info = self.engine.info
        return await self.routes.decide(
            text, base=sampling or SamplingConfig(),
            n_ctx=info.n_ctx if info else DEFAULT_N_CTX,
            previous=self.last_route(conversation_id) if conversation_id else None,
            override=route, pinned=pinned, exact_count=self.engine.count_tokens,
            ask_model=self.engine.classify)

    def _open(self, text: str, conversation_id: int | None, routed: RoutedTurn | None,
              ladder: Ladder | None, sampling: SamplingConfig | None,
              ignore_eos: bool, parent: Parent = "active") -> _Turn:
        """Store the user's message (under ``parent``, by default the active leaf) and
        the reply's row (``streaming``), in a new conversation where
        ``conversation_id`` is None."""
        if conversation_id is None:
            model = self.engine.info.name if self.engine.info else None
            conversation_id = self.store.create_conversation(title_from_prompt(text), model)
        history = self.history(conversation_id) if parent == "active" else \
            self._context([] if parent is None else self.store.path_to(parent))
        base_change = ladder.base_change if ladder else ""
        # A format the user asked for (--format) replaces the route's own instructions:
        # "answer briefly" beside "reply with only JSON" made small models answer in
        # prose (docs/answer-quality.md).
        instructions = "" if base_change or not routed else routed.template.instructions
        user_stats: dict[str, Any] = ({"route": routed.event.route,
                                       "instructions": instructions} if routed else {})
        if base_change:
            user_stats["format_instructions"] = base_change
        user_id = self.store.add_message(conversation_id, "user", text,
                                         stats=user_stats or None, parent_id=parent)
        reply_id = self.store.add_message(conversation_id, "assistant", "", status="streaming",
                                          parent_id=user_id)
        return _Turn(conversation_id, user_id, reply_id, routed, ladder, history,
                     model_text=with_instructions(text, instructions), sampling=sampling,
                     ignore_eos=ignore_eos, user_stats=user_stats, prompt_change=base_change)

    def _reopen(self, user: MessageRow, routed: RoutedTurn | None, ladder: Ladder | None,
                sampling: SamplingConfig | None, ignore_eos: bool) -> _Turn:
        """A new reply's row (``streaming``) under the stored user message ``user``."""
        stats = dict(user.stats or {})
        base_change = ladder.base_change if ladder else ""
        if stats.get("format_instructions", "") != base_change or user.status == "error":
            # The message is kept as this attempt sends it, so the next turn's history
            # extends what the cache will hold; a prompt that failed is tried again.
            stats.pop("format_instructions", None)
            stats.update({"format_instructions": base_change} if base_change else {})
            self.store.update_message(user.id, status="complete", stats=stats)
        reply_id = self.store.add_message(user.conversation_id, "assistant", "",
                                          status="streaming", parent_id=user.id)
        history = self._context(self.store.path_to(user.parent_id)
                                if user.parent_id is not None else [])
        # As the model saw it before, whatever the route's template says now.
        model_text = with_instructions(user.content, stats.get("instructions", ""))
        return _Turn(user.conversation_id, user.id, reply_id, routed, ladder, history,
                     model_text=model_text, sampling=sampling, ignore_eos=ignore_eos,
                     user_stats=stats, prompt_change=base_change)

    def _events(self, turn: _Turn) -> AsyncIterator[Event]:
        """The reply's events: one attempt, or the retry ladder's attempts."""
        if turn.ladder is None:
            return self._attempt(turn, Step(1, "as_generated"))
        return run_ladder(turn.ladder, lambda step: self._attempt(turn, step),
                          lambda done: self._record(turn, done))

    def _attempt(self, turn: _Turn, step: Step) -> AsyncIterator[Event]:
        content = with_suffix(turn.model_text, step.prompt_change)
        request = ChatRequest(
            messages=(*turn.history, ChatMessage(role="user", content=content)),
            sampling=turn.sampling, ignore_eos=turn.ignore_eos,
            reserve=turn.routed.reserve if turn.routed else None,
            constraint=step.constraint)
        if turn.cancel is None:
            return self.engine.chat(request)
        return self.engine.stream(request, turn.cancel)

    def _record(self, turn: _Turn, done: Attempt) -> None:
        """Store a finished attempt for review."""
        if done.strategy != "repair":  # a repair sends no prompt: the cache keeps the last
            turn.prompt_change = done.prompt_change
        ladder = turn.ladder
        self.store.add_attempt(
            turn.reply_id, done.number, done.strategy, ladder.spec.format if ladder else "",
            done.text, done.check.ok, found=done.check.found, errors=done.check.errors,
            prompt_change=done.prompt_change, completion_tokens=done.completion_tokens,
            elapsed_s=round(done.elapsed_s, 3), truncated=done.check.truncated)

    def _follow(self, turn: _Turn, event: Event) -> None:
        """Keep the reply's text so far, saved every ``save_every_s``, and its end."""
        if isinstance(event, TokenChunk):
            turn.parts.append(event.text)
            if time.monotonic() - turn.last_save >= self.save_every_s:
                self.store.update_message(turn.reply_id, content="".join(turn.parts))
                turn.last_save = time.monotonic()
        elif isinstance(event, Retry):
            turn.parts = []  # the stored partial is the attempt in flight
        elif isinstance(event, Done | Error):
            turn.final = event

    def _close(self, turn: _Turn) -> None:
        """Store how the turn ended, whether the stream finished or its consumer left."""
        if turn.prompt_change != (turn.ladder.base_change if turn.ladder else ""):
            # The cache holds the last attempt's prompt: the next turn's history
            # repeats it, so its tokens extend the cache instead of diverging here.
            self.store.update_message(turn.user_id, stats={
                **turn.user_stats, "format_instructions": turn.prompt_change})
        self._finish(turn.user_id, turn.reply_id, "".join(turn.parts), turn.final,
                     turn.routed.event.route if turn.routed else None)

    def _finish(self, user_id: int, reply_id: int, partial: str,
                final: Done | Error | None, route: str | None = None) -> None:
        if isinstance(final, Done):
            status = "complete" if final.finish_reason != "cancelled" else "cancelled"
            stats = final.model_dump(exclude={"text", "type", "ts"})
            if route is not None:
                stats["route"] = route
            self.store.update_message(reply_id, content=final.text, status=status, stats=stats)
        elif isinstance(final, Error):
            self.store.update_message(reply_id, content=partial, status="error",
                                      stats={"error": final.code, "message": final.message})
            if not partial and not _answered_elsewhere(self.store, reply_id):
                # Nothing was answered: keep the prompt for the record but out of the
                # context, or every later turn would fail the same way.
                self.store.update_message(user_id, status="error")
        else:  # the consumer left before the end
            self.store.update_message(reply_id, content=partial, status="cancelled")


def with_suffix(text: str, suffix: str) -> str:
    """The user turn with an attempt's added instructions after the message."""
    return f"{text}\n\n{suffix}" if suffix else text


def _ladder_for(output: OutputSpec | None, routed: RoutedTurn | None) -> Ladder | None:
    """The retry ladder for a structured reply: the user's ``--format`` with the default
    policy, else the route template's output format and policy; None for prose."""
    if output is not None:
        return Ladder(output, DEFAULT_POLICY, base_change=format_instructions(output))
    if routed is not None and routed.template.output in ("json", "code", "list"):
        template = routed.template
        spec = OutputSpec(format=template.output,
                          schema=template.json_schema if template.output == "json" else None)
        return Ladder(spec, template.retry)
    return None


def _answered_elsewhere(store: Store, reply_id: int) -> bool:
    """Whether another reply to the same message has text (an earlier answer that a
    failed regeneration must not take out of the context)."""
    replies, _ = store.siblings(reply_id)
    return any(r.content and r.id != reply_id for r in replies)


def _in_context(row: MessageRow) -> bool:
    """Unanswered prompts stay out (they failed); replies count when they have text,
    whether complete, cancelled or cut off."""
    if row.role == "user":
        return row.status != "error"
    return row.role == "assistant" and bool(row.content)
