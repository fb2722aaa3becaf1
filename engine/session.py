"""A conversation over an engine, recorded in the store as it happens.

The user's message is committed before generation starts; the reply's row exists
from its first moment (status ``streaming``) and its text is saved every
``save_every_s`` seconds, so a process killed mid-reply loses at most the last few
tokens, and the conversation opens again with that reply marked ``interrupted``.
Both UIs (the TUI and ``kvchat ask``) talk to the engine through this class.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from engine.api import ChatEngine, check_prompt
from engine.chat_format import ChatMessage
from engine.config import SamplingConfig
from engine.events import Done, Error, Event, TokenChunk, TurnStarted
from engine.store import MessageRow, Store, title_from_prompt


class ChatSession:
    def __init__(self, engine: ChatEngine, store: Store, system_prompt: str = "",
                 save_every_s: float = 1.0) -> None:
        self.engine = engine
        self.store = store
        self.system_prompt = system_prompt
        self.save_every_s = save_every_s

    def history(self, conversation_id: int) -> list[ChatMessage]:
        """The messages the model sees: the system prompt, then every user message that
        was answered and every reply with text."""
        messages = [ChatMessage(role="system", content=self.system_prompt)] \
            if self.system_prompt else []
        rows = self.store.messages(conversation_id)
        for row in rows:
            if _in_context(row):
                messages.append(ChatMessage(role=row.role, content=row.content))
        return messages

    async def send(self, text: str, conversation_id: int | None = None,
                   sampling: SamplingConfig | None = None, *,
                   ignore_eos: bool = False) -> AsyncIterator[Event]:
        """Store ``text``, stream the reply's events, and store the reply.

        Raises PromptError (before anything is stored) and ConversationNotFound.
        """
        check_prompt(text)
        if conversation_id is None:
            model = self.engine.info.name if self.engine.info else None
            conversation_id = self.store.create_conversation(title_from_prompt(text), model)
        else:
            self.store.get_conversation(conversation_id)  # raises ConversationNotFound
        messages = [*self.history(conversation_id), ChatMessage(role="user", content=text)]
        user_id = self.store.add_message(conversation_id, "user", text)
        reply_id = self.store.add_message(conversation_id, "assistant", "", status="streaming")
        yield TurnStarted(conversation_id=conversation_id, user_message_id=user_id,
                          reply_message_id=reply_id)

        parts: list[str] = []
        last_save = time.monotonic()
        final: Done | Error | None = None
        try:
            async for event in self.engine.chat(messages, sampling, ignore_eos=ignore_eos):
                if isinstance(event, TokenChunk):
                    parts.append(event.text)
                    if time.monotonic() - last_save >= self.save_every_s:
                        self.store.update_message(reply_id, content="".join(parts))
                        last_save = time.monotonic()
                elif isinstance(event, Done | Error):
                    final = event
                yield event
        finally:
            self._finish(user_id, reply_id, "".join(parts), final)

    def _finish(self, user_id: int, reply_id: int, partial: str,
                final: Done | Error | None) -> None:
        if isinstance(final, Done):
            status = "complete" if final.finish_reason != "cancelled" else "cancelled"
            stats = final.model_dump(exclude={"text", "type", "ts"})
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
