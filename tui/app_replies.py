"""How a reply shows as the reply worker's messages come in: the prompt and its empty
reply, each frame (text and gauges in one screen update), a retry, the end or the
failure. Mixed into :class:`tui.app.KvchatApp`, whose ``generate_reply`` worker posts
the messages (see :mod:`tui.coalesce`)."""

from __future__ import annotations

from contextlib import ExitStack

from textual import on

from engine.events import KVUsage
from tui.app_events import EventPanes
from tui.coalesce import ReplyCoalescer
from tui.heap import settle_heap
from tui.messages import (
    EngineEvent,
    ReplyChunk,
    ReplyFailed,
    ReplyFinished,
    ReplyRetrying,
    ReplyStarted,
)
from tui.notes import done_note
from tui.widgets.chat_pane import ChatPane, UserMessage
from tui.widgets.prompt_input import PromptInput
from tui.widgets.status_line import StatusLine

SETTLE_S = 0.05
"""How long a streamed frame holds screen updates back after it is applied."""


class ReplyView(EventPanes):
    conversation_id: int | None
    replying: bool
    yield_cpu: bool
    source_view: bool
    _prompt_shown: UserMessage | None
    _turn_started: bool
    _frames_unshown: int
    _gather: ReplyCoalescer | None
    _blink: bool

    def _prepare_reply(self) -> None:
        if self._reply is not None:
            self._reply.prepare()

    async def _open_reply(self, prompt_text: str | None) -> None:
        """The prompt (None: a new reply to a prompt shown already) and its empty reply."""
        pane = self.query_one(ChatPane)
        self._prompt_shown = None if prompt_text is None else await pane.add_user(prompt_text)
        self._reply = await pane.add_reply(source_view=self.source_view)
        self._reply_route = ""
        pane.anchor()
        # A blink is a screen update twice a second: decoding's time on shared cores.
        prompt = self.query_one(PromptInput)
        self._blink, prompt.cursor_blink = prompt.cursor_blink, False

    @on(ReplyStarted)
    async def _reply_started(self, message: ReplyStarted) -> None:
        """The prompt is stored: the reply shown since it was sent gets its row."""
        self.conversation_id = message.turn.conversation_id
        self._turn_started = True
        if self._reply is None:  # a turn that was not sent from the prompt
            await self._open_reply(message.prompt)
            self.call_after_refresh(self._prepare_reply)
        if self._reply is not None:
            self._reply.message_id = message.turn.reply_message_id
        if self._prompt_shown is not None:
            self._prompt_shown.message_id = message.turn.user_message_id

    @on(ReplyChunk)
    async def _reply_chunk(self, message: ReplyChunk) -> None:
        # One screen update for the frame's text and gauges, not one for each; and the
        # updates new Markdown blocks ask for while they settle in after their mount
        # join it (each one lays out and paints the whole chat pane).
        batch = ExitStack()
        batch.enter_context(self.batch_update())
        try:
            if self._reply is not None and message.text:
                await self._reply.append(message.text)
            usage = [e for e in message.gauges if isinstance(e, KVUsage)]
            if usage:
                self.show_kv(usage)
            for event in message.gauges:
                if not isinstance(event, KVUsage):
                    await self.show_event(event)
        finally:
            self.set_timer(SETTLE_S, lambda: self._end_frame(batch))

    def _end_frame(self, batch: ExitStack) -> None:
        batch.close()
        # The screen resumes its update timer only when it goes idle: an update that
        # fell due while the batch was open waits for that (App.batch_update prompts
        # the app, not the screen), and a reply would otherwise show in bursts.
        if self.screen_stack:  # not when the app is closing
            self.screen.check_idle()
            self.call_after_refresh(self._frame_shown)

    def _frame_shown(self) -> None:
        """The screen has shown a frame: the reply worker may send the next."""
        self._frames_unshown = max(0, self._frames_unshown - 1)
        if self._gather is not None and self.replying:
            self._gather.tick()

    @on(ReplyRetrying)
    async def _reply_retrying(self, message: ReplyRetrying) -> None:
        if self._reply is not None:
            await self._reply.start_attempt(message.retry)
            self._reply.set_note(f"{self._reply_route}attempt {message.retry.attempt} · "
                                 f"{message.retry.strategy.replace('_', ' ')} · "
                                 f"{message.retry.reason}")

    @on(ReplyFinished)
    async def _reply_finished(self, message: ReplyFinished) -> None:
        done = message.done
        if self._reply is not None:
            note = self._reply_route + done_note(done, self._reply.strategies)
            await self._reply.finish(note, final_text=done.text)
        if not self._end_reply():
            return
        if done.completion_tokens > 1:
            self.query_one(StatusLine).tokens_per_s = done.tokens_per_s
        if done.attempts > 1 or done.output_ok is False:
            self.notify("Ctrl+R reviews its attempts.", title=f"Reply took {done.attempts} "
                        "attempts", severity="warning" if done.output_ok is False
                        else "information")

    @on(ReplyFailed)
    async def _reply_failed(self, message: ReplyFailed) -> None:
        if self._reply is not None and not self._turn_started:
            await self._withdraw_prompt()
        if self._reply is not None:
            await self._reply.finish(f"error: {message.message}")
        else:
            await self.query_one(ChatPane).add_notice(f"error: {message.message}")
        if not self._end_reply():
            return
        if message.code == "engine_died":
            self._engine_died = True
            self.query_one(StatusLine).state = "engine stopped: the next message reloads it"
        self.notify(message.message, title="Reply failed", severity="error")

    async def _withdraw_prompt(self) -> None:
        """The engine refused the prompt before storing it (text that is not valid
        UTF-8, a route that does not exist...): it leaves the conversation, and goes
        back into the message box to be edited, unless something new was typed there
        meanwhile."""
        shown, self._prompt_shown = self._prompt_shown, None
        reply, self._reply = self._reply, None
        await self.query_one(ChatPane).remove_children(
            [widget for widget in (shown, reply) if widget is not None])
        prompt = self.query_one(PromptInput)
        if shown is not None and not prompt.text:
            prompt.text = shown.text
            prompt.move_cursor(prompt.document.end)

    def _end_reply(self) -> bool:
        """The reply is over; False if the app closed meanwhile (the reply's Markdown
        going in takes a few awaits), and there is nothing left to show."""
        self.replying = False
        self._reply = self._prompt_shown = None
        self._gather = None
        if not self.query(StatusLine):
            return False
        self.query_one(StatusLine).state = "ready"
        self.query_one(PromptInput).cursor_blink = self._blink
        self.refresh_bindings()
        if self.yield_cpu:
            self.call_after_refresh(settle_heap)
        return True

    @on(EngineEvent)
    async def _engine_event(self, message: EngineEvent) -> None:
        await self.show_event(message.event)
