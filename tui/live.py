"""The replies streaming now, one record each: several conversations may stream at once
(``ChatEngine.parallel_replies``), and only the one shown draws.

A :class:`LiveReply` belongs to one conversation and lives from Enter to its end. Its
worker posts every message of the reply chain with it (``tui.messages``), so a handler
knows which reply a frame is for; ``widget`` is where it streams, or None while its
conversation is not on screen: then its text only gathers here (the session stores it
as it goes) and is drawn again when its conversation is shown.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from itertools import count
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from textual.worker import Worker

    from tui.coalesce import ReplyCoalescer
    from tui.widgets.answer_columns import AnswerColumns
    from tui.widgets.chat_pane import ReplyMessage, UserMessage

Branch = tuple[Literal["edit", "regenerate"], int]
"""A reply that adds a sibling: ("edit", the user message edited) or ("regenerate",
the conversation whose last reply is answered again)."""

_keys = count(1)


@dataclass(eq=False)
class LiveReply:
    conversation_id: int | None
    """None until the session has stored the first message of a new conversation."""
    prompt: str
    """The message as sent (empty for a regeneration)."""
    branch: Branch | None = None
    answers: int = 0
    """N answers decoded side by side (``ChatSession.answers``); 0 for one reply."""
    key: int = field(default_factory=lambda: next(_keys))
    cancel: threading.Event = field(default_factory=threading.Event)
    """Stops this reply alone (``ChatSession.send(cancel=...)``)."""
    worker: Worker[None] | None = None
    gather: ReplyCoalescer | None = None
    text: str = ""
    """The text of the attempt streaming, so far."""
    widget: ReplyMessage | None = None
    prompt_widget: UserMessage | None = None
    """The prompt, shown before the session stores it."""
    columns: AnswerColumns | None = None
    """N answers' columns, while shown."""
    user_id: int | None = None
    reply_ids: list[int] = field(default_factory=list)
    """The reply's row (N answers: one per answer), once stored."""
    turn_started: bool = False
    frames_unshown: int = 0
    """Frames posted that the screen has not shown yet."""
    route_note: str = ""
    queued: int | None = None
    """Its place in the engine's queue while it waits (``queued`` events)."""
    tokens_per_s: float = 0.0
    """Its own decode rate, from its ``progress`` events."""
    decoding: bool = False
    """Its first token has come."""
    started: float = field(default_factory=time.monotonic)
    texts: list[str] = field(default_factory=list)
    """N answers: each one's text so far."""
    rates: dict[int, float] = field(default_factory=dict)
    """N answers: each one's tokens/s."""
    ended: set[int] = field(default_factory=set)
    """N answers: those that have ended."""

    def __post_init__(self) -> None:
        self.texts = [""] * self.answers

    @property
    def shown(self) -> bool:
        return self.widget is not None or self.columns is not None

    @property
    def reply_id(self) -> int | None:
        return self.reply_ids[0] if self.reply_ids else None

    def detach(self) -> None:
        """Its conversation leaves the screen: it streams on, drawing nothing."""
        self.widget = self.prompt_widget = None
        self.columns = None
