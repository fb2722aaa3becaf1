"""The app's message chain: PromptSubmitted -> ReplyStarted -> ReplyChunk* ->
(ReplyRetrying -> ReplyChunk*)* -> ReplyFinished | ReplyFailed, each carrying its
:class:`tui.live.LiveReply` (several replies may stream at once); for N answers side by
side, ReplyStarted (one per answer) -> AnswerChunk* -> AnswerEnded (one per answer)
-> AnswerPicked; plus ModelReady /
ModelFailed at start, ModelSwitching -> ModelSwitched | ModelSwitchFailed for another
model, and EngineEvent for everything else the panes show (evictions,
routes, output checks); the gauges (KV usage, speed, speculation, memory) of a
streaming reply come inside its ReplyChunk frames."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.message import Message

from engine.events import Done, Error, Event, MemorySnapshot, ModelLoaded, Retry, TurnStarted

if TYPE_CHECKING:
    from tui.live import LiveReply


class LiveMessage(Message):
    """A message of one live reply's chain; ``live`` None: a turn the app did not send
    itself (the reply then opens where it is shown)."""

    def __init__(self, live: LiveReply | None = None) -> None:
        super().__init__()
        self.live = live


class PromptSubmitted(Message):
    def __init__(self, text: str, route: str | None = None, edit_of: int | None = None) -> None:
        super().__init__()
        self.text = text
        self.route = route
        """The route asked for (``/route NAME`` or ``--route``); None lets the router pick."""
        self.edit_of = edit_of
        """The user message this text is a new version of; None: a new message."""


class ReplyStarted(LiveMessage):
    def __init__(self, turn: TurnStarted, prompt: str, live: LiveReply | None = None) -> None:
        super().__init__(live)
        self.turn = turn
        self.prompt = prompt


class ReplyChunk(LiveMessage):
    """One frame of a streaming reply: the text gathered since the last (may be empty)
    and the gauge events (KV usage, speed, speculation, memory) that go with it."""

    def __init__(self, text: str, n_tokens: int, gauges: list[Event] | None = None,
                 live: LiveReply | None = None) -> None:
        super().__init__(live)
        self.text = text
        self.n_tokens = n_tokens
        self.gauges = gauges or []


class ReplyRetrying(LiveMessage):
    """A structured reply failed its check; the next attempt's tokens follow."""

    def __init__(self, retry: Retry, live: LiveReply | None = None) -> None:
        super().__init__(live)
        self.retry = retry


class ReplyFinished(LiveMessage):
    def __init__(self, done: Done, live: LiveReply | None = None) -> None:
        super().__init__(live)
        self.done = done


class ReplyFailed(LiveMessage):
    def __init__(self, code: str, message: str, live: LiveReply | None = None) -> None:
        super().__init__(live)
        self.code = code
        self.message = message


class ModelReady(Message):
    def __init__(self, info: ModelLoaded, memory: list[MemorySnapshot] | None = None) -> None:
        super().__init__()
        self.info = info
        self.memory = memory or []
        """The load's snapshots (planned, then measured) where the engine reports them."""


class ModelFailed(Message):
    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message


class ModelSwitching(Message):
    """A switch to ``name`` has begun: the old model is being freed, the new one loaded."""

    def __init__(self, name: str, plan: str) -> None:
        super().__init__()
        self.name = name
        self.plan = plan
        """The listing's plan for it (what it needs of what budget)."""


class ModelSwitched(Message):
    def __init__(self, info: ModelLoaded, memory: list[MemorySnapshot]) -> None:
        super().__init__()
        self.info = info
        self.memory = memory


class ModelSwitchFailed(Message):
    """The switch was refused or its load failed; ``info`` is the model loaded now (the
    previous one, kept or loaded again), None when none is."""

    def __init__(self, message: str, info: ModelLoaded | None,
                 memory: list[MemorySnapshot]) -> None:
        super().__init__()
        self.message = message
        self.info = info
        self.memory = memory


class EngineEvent(LiveMessage):
    """Any other engine event, for the panes that show it."""

    def __init__(self, event: Event, live: LiveReply | None = None) -> None:
        super().__init__(live)
        self.event = event


class AnswerChunk(LiveMessage):
    """A frame of answer ``k`` of N decoded side by side."""

    def __init__(self, k: int, text: str, gauges: list[Event], live: LiveReply) -> None:
        super().__init__(live)
        self.k = k
        self.text = text
        self.gauges = gauges


class AnswerEnded(LiveMessage):
    """Answer ``k`` is over (its ``done``, or its error)."""

    def __init__(self, k: int, end: Done | Error, live: LiveReply) -> None:
        super().__init__(live)
        self.k = k
        self.end = end
