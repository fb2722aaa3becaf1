"""N answers side by side (``Ctrl+T``, *Three answers* in the palette): the message box's
text, or the last message again when the box is empty, answered three times from one
evaluation of its prompt (``ChatSession.answers`` over ``ChatEngine.answers``), each
answer in a column of :class:`tui.widgets.answer_columns.AnswerColumns` with its own
note. 1..3 or a click keeps one as the reply; the store keeps the others as its
versions (Alt+Left/Right). Mixed into :class:`tui.app.KvchatApp`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from textual import on, work
from textual.app import App

from engine.api import ChatEngine
from engine.config import KvchatConfig
from engine.errors import KvchatError
from engine.events import Done, Error, Event, Progress, TurnStarted
from engine.session import ChatSession
from engine.store import Store
from tui.coalesce import ReplyCoalescer, pacing
from tui.live import LiveReply
from tui.messages import AnswerChunk, AnswerEnded, EngineEvent, ReplyFailed, ReplyStarted
from tui.notes import done_note
from tui.widgets.answer_columns import AnswerColumns
from tui.widgets.chat_pane import ChatPane
from tui.widgets.prompt_input import PromptInput

ANSWERS = 3


class AnswerActions(App[int]):
    config: KvchatConfig
    engine: ChatEngine
    session: ChatSession
    store: Store
    conversation_id: int | None
    ready: bool
    ignore_eos: bool
    source_view: bool
    live: dict[int, LiveReply]
    # Provided by the app's other parts.
    _may_send: Callable[[], bool]
    _end_reply: Callable[[LiveReply], bool]
    _conversation_name: Callable[[LiveReply], str]
    _pause_blink: Callable[[], None]
    cut_from: Callable[..., Awaitable[bool]]
    show_history: Callable[[int], Awaitable[None]]
    show_state: Callable[..., None]
    show_batch: Callable[..., None]

    async def action_three_answers(self) -> None:
        """Ctrl+T: three answers to the message box's text (else to the last message
        again), side by side; 1/2/3 keeps one."""
        n = ANSWERS
        if self.engine.parallel_replies < n:
            self.notify(f"{n} answers at once need {n} sequences: start kvchat with "
                        f"--parallel {n}.", title="Three answers", severity="warning")
            return
        if not self._may_send():
            return
        prompt = self.query_one(PromptInput)
        text = prompt.text if prompt.text.strip() else None
        if text is None:
            if self.conversation_id is None:
                self.notify("Write a message first: its three answers go side by side.",
                            title="Three answers", severity="warning")
                return
            try:
                user = self.store.to_answer_again(self.conversation_id)
            except KvchatError as exc:
                self.notify(exc.message, title="Three answers", severity="warning")
                return
            if not await self.cut_from(user.id, keep=True):
                await self.show_history(self.conversation_id)
                await self.cut_from(user.id, keep=True)
        else:
            prompt.remember(text)
            prompt.text = ""
        live = LiveReply(self.conversation_id, text or "", answers=n)
        self.live[live.key] = live
        pane = self.query_one(ChatPane)
        if text is not None:
            live.prompt_widget = await pane.add_user(text)
        await self.attach_answers(live)
        self.show_state()
        self.refresh_bindings()
        live.worker = self.generate_answers(live)

    async def attach_answers(self, live: LiveReply) -> None:
        """The answers' columns, empty or with their text so far."""
        pane = self.query_one(ChatPane)
        pane.close_runways()
        columns = live.columns = AnswerColumns(live.answers)
        await pane.mount(columns)
        for k, text in enumerate(live.texts):
            if text:
                columns.append(k, text)
        pane.anchor()
        self._pause_blink()

    @work(group="answers", exit_on_error=False)
    async def generate_answers(self, live: LiveReply) -> None:
        pace = pacing(False)  # three plain columns: never the source view's pace

        def gather(k: int) -> ReplyCoalescer:
            def post_event(event: Event) -> None:
                if isinstance(event, Done | Error):
                    self.post_message(AnswerEnded(k, event, live))
                else:
                    self.post_message(EngineEvent(event, live))

            def post_frame(text: str, n: int, gauges: list[Event]) -> None:
                self.post_message(AnswerChunk(k, text, gauges, live))

            return ReplyCoalescer(post_frame, post_event, frame_s=pace.frame_s,
                                  gauge_s=pace.gauge_s)

        gathers = [gather(k) for k in range(live.answers)]
        try:
            async for event in self.session.answers(
                    live.prompt or None, live.conversation_id, live.answers,
                    self.config.sampling, ignore_eos=self.ignore_eos, cancel=live.cancel):
                k = getattr(event, "reply", None)
                if isinstance(event, TurnStarted):
                    self.post_message(ReplyStarted(event, live.prompt, live))
                elif k is None and isinstance(event, Error):  # of every answer
                    for j in range(live.answers):
                        self.post_message(AnswerEnded(j, event, live))
                else:
                    gathers[k or 0].add(event)
            for g in gathers:
                g.flush()
        except KvchatError as exc:
            self.post_message(ReplyFailed(exc.code, exc.message, live))

    @on(AnswerChunk)
    def _answer_chunk(self, message: AnswerChunk) -> None:
        live = message.live
        assert live is not None
        live.texts[message.k] += message.text
        if message.text:
            live.decoding, live.queued = True, None
        for event in message.gauges:
            if isinstance(event, Progress):
                live.rates[message.k] = event.tokens_per_s
                live.tokens_per_s = sum(live.rates.values())
        if live.columns is not None and message.text:
            live.columns.append(message.k, message.text)
        self.show_batch()

    @on(AnswerEnded)
    def _answer_ended(self, message: AnswerEnded) -> None:
        live, end = message.live, message.end
        assert live is not None
        if message.k in live.ended:
            return
        live.ended.add(message.k)
        note = done_note(end, []) if isinstance(end, Done) else f"error: {end.message}"
        if live.columns is not None:
            live.columns.finish(message.k, note, end.text if isinstance(end, Done) else None)
        if len(live.ended) < live.answers:
            return
        columns, shown = live.columns, live.shown
        if not self._end_reply(live):
            return
        if columns is not None and shown:
            columns.reply_ids = list(live.reply_ids)
            columns.conversation_id = live.conversation_id
            columns.focus()
            self.notify("1, 2 or 3 (or a click) keeps one; the others stay as its versions.",
                        title="Three answers")
        else:
            self.notify(f"{self._conversation_name(live)}: the first is shown, Alt+Left/Right "
                        "shows the others.", title="Three answers ready")

    @on(AnswerColumns.Picked)
    async def _answer_picked(self, message: AnswerColumns.Picked) -> None:
        columns = message.columns
        cid = columns.conversation_id
        if cid is None or message.index >= len(columns.reply_ids):
            return
        try:
            self.session.keep_answer(cid, columns.reply_ids[message.index])
        except KvchatError as exc:  # deleted meanwhile
            self.notify(exc.message, title="Three answers", severity="warning")
            return
        if cid == self.conversation_id:
            await self.show_history(cid)
        self.query_one(PromptInput).focus()
        self.notify(f"Kept answer {message.index + 1}; Alt+Left/Right shows the others.")
