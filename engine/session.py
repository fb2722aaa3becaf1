"""A conversation over an engine, recorded in the store as it happens.

The user's message is committed before generation starts; the reply's row exists
from its first moment (status ``streaming``) and its text is saved every
``save_every_s`` seconds, so a process killed mid-reply loses at most the last few
tokens, and the conversation opens again with that reply marked ``interrupted``.
Both UIs (the TUI and ``kvchat ask``) talk to the engine through this class.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable

from engine.api import ChatEngine, check_prompt
from engine.chat_format import ChatMessage
from engine.config import SamplingConfig
from engine.events import Done, Error, Event, TokenChunk, TurnStarted
from engine.routing import DEFAULT_N_CTX, RouteService
from engine.store import MessageRow, Store, title_from_prompt
from engine.templates import with_instructions


class ChatSession:
    def __init__(self, engine: ChatEngine, store: Store, system_prompt: str = "",
                 save_every_s: float = 1.0, routes: RouteService | None = None) -> None:
        self.engine = engine
        self.store = store
        self.system_prompt = system_prompt
        self.save_every_s = save_every_s
        self.routes = routes
        """Routes each message to a template; None sends messages as they are."""

    def history(self, conversation_id: int) -> list[ChatMessage]:
        """The messages the model sees: the system prompt, then every user message that
        was answered and every reply with text."""
        messages = [ChatMessage(role="system", content=self.system_prompt)] \
            if self.system_prompt else []
        rows = self.store.messages(conversation_id)
        for row in rows:
            if _in_context(row):
                # A routed turn is rebuilt exactly as the model saw it, so this turn's
                # rendered prompt extends the last one's and the KV cache is reused.
                instructions = (row.stats or {}).get("instructions", "") \
                    if row.role == "user" else ""
                messages.append(ChatMessage(role=row.role,
                                            content=with_instructions(row.content,
                                                                      instructions)))
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
                   pinned: Iterable[str] = ()) -> AsyncIterator[Event]:
        """Store ``text``, route it, stream the reply's events, and store the reply.

        ``route`` overrides the router for this message; ``pinned`` names sampling
        fields the user set explicitly, which the route's template must not change.
        Raises PromptError and RouteError (before anything is stored) and
        ConversationNotFound.
        """
        check_prompt(text)
        if route is not None and self.routes is not None:
            self.routes.check_route(route)
        if conversation_id is not None:
            self.store.get_conversation(conversation_id)  # raises ConversationNotFound
        base = sampling or SamplingConfig()
        routed = None
        if self.routes is not None:
            info = self.engine.info
            routed = await self.routes.decide(
                text, base=base, n_ctx=info.n_ctx if info else DEFAULT_N_CTX,
                previous=self.last_route(conversation_id) if conversation_id else None,
                override=route, pinned=pinned, exact_count=self.engine.count_tokens,
                ask_model=self.engine.classify)
            sampling = routed.sampling
        if conversation_id is None:
            model = self.engine.info.name if self.engine.info else None
            conversation_id = self.store.create_conversation(title_from_prompt(text), model)
        model_text = routed.model_text if routed else text
        messages = [*self.history(conversation_id),
                    ChatMessage(role="user", content=model_text)]
        user_stats = ({"route": routed.event.route,
                       "instructions": routed.template.instructions} if routed else None)
        user_id = self.store.add_message(conversation_id, "user", text, stats=user_stats)
        reply_id = self.store.add_message(conversation_id, "assistant", "", status="streaming")
        yield TurnStarted(conversation_id=conversation_id, user_message_id=user_id,
                          reply_message_id=reply_id)
        if routed is not None:
            yield routed.event

        parts: list[str] = []
        last_save = time.monotonic()
        final: Done | Error | None = None
        try:
            async for event in self.engine.chat(messages, sampling, ignore_eos=ignore_eos,
                                                reserve=routed.reserve if routed else None):
                if isinstance(event, TokenChunk):
                    parts.append(event.text)
                    if time.monotonic() - last_save >= self.save_every_s:
                        self.store.update_message(reply_id, content="".join(parts))
                        last_save = time.monotonic()
                elif isinstance(event, Done | Error):
                    final = event
                yield event
        finally:
            self._finish(user_id, reply_id, "".join(parts), final,
                         routed.event.route if routed else None)

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
            if not partial:
                # Nothing was answered: keep the prompt for the record but out of the
                # context, or every later turn would fail the same way.
                self.store.update_message(user_id, status="error")
        else:  # the consumer left before the end
            self.store.update_message(reply_id, content=partial, status="cancelled")


def _in_context(row: MessageRow) -> bool:
    """Unanswered prompts stay out (they failed); replies count when they have text,
    whether complete, cancelled or cut off."""
    if row.role == "user":
        return row.status != "error"
    return row.role == "assistant" and bool(row.content)
