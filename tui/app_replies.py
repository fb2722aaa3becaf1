"""How a reply shows as the reply worker's messages come in: the prompt and its empty
reply, each frame (text and gauges in one screen update), a retry, the end or the
failure. Mixed into :class:`tui.app.KvchatApp`, whose ``generate_reply`` worker posts
the messages (see :mod:`tui.coalesce`), each with its :class:`tui.live.LiveReply`.

Several replies may stream at once, each in its conversation; only the one whose
conversation is shown draws. The others gather their text (the session stores it) and
their speed, and draw again when their conversation is shown (:meth:`attach`)."""

from __future__ import annotations

import time
from contextlib import ExitStack

from textual import on

from engine.errors import KvchatError
from engine.events import KVUsage, Progress
from tui.app_events import EventPanes
from tui.heap import settle_heap
from tui.live import LiveReply
from tui.messages import (
    EngineEvent,
    LiveMessage,
    ReplyChunk,
    ReplyFailed,
    ReplyFinished,
    ReplyRetrying,
    ReplyStarted,
)
from tui.notes import done_note
from tui.widgets.chat_pane import ChatPane
from tui.widgets.prompt_input import PromptInput
from tui.widgets.status_line import StatusLine

SETTLE_S = 0.05
"""How long a streamed frame holds screen updates back after it is applied."""
BATCH_S = 0.5
"""The status line's figures for replies decoding together, at most this often."""


class ReplyView(EventPanes):
    conversation_id: int | None
    yield_cpu: bool
    source_view: bool
    live: dict[int, LiveReply]
    _external: LiveReply | None
    _blink: bool
    _batch_at = 0.0

    def shown_live(self) -> LiveReply | None:
        raise NotImplementedError  # the app's

    def _live_of(self, message: LiveMessage) -> LiveReply | None:
        return message.live or self._external

    async def _open_reply(self, live: LiveReply, prompt_text: str | None) -> None:
        """The prompt (None: a new reply to a prompt shown already) and its empty reply."""
        pane = self.query_one(ChatPane)
        live.prompt_widget = None if prompt_text is None else await pane.add_user(prompt_text)
        live.widget = await pane.add_reply(source_view=self.source_view)
        live.route_note = ""
        pane.anchor()
        self._pause_blink()

    async def attach(self, live: LiveReply) -> None:
        """A live reply's conversation is shown again: its text so far, streaming on."""
        pane = self.query_one(ChatPane)
        note = f"queued, position {live.queued}" if live.queued else live.route_note
        live.widget = await pane.add_reply(note=note, message_id=live.reply_id)
        if live.text:
            await live.widget.append(live.text)
        pane.anchor()
        self._pause_blink()

    def _pause_blink(self) -> None:
        # A blink is a screen update twice a second: decoding's time on shared cores.
        prompt = self.query_one(PromptInput)
        if prompt.cursor_blink:
            self._blink, prompt.cursor_blink = True, False

    def show_state(self, state: str | None = None) -> None:
        """The status line's state for the conversation shown: ``state``, else
        generating or queued while its reply streams, else ready."""
        live = self.shown_live()
        if state is None:
            state = "ready" if live is None else \
                f"queued, position {live.queued}…" if live.queued else "generating…"
        self.query_one(StatusLine).state = state
        self.show_batch(force=True)

    def show_batch(self, force: bool = False) -> None:
        """While several replies decode: how many, how many wait, and the shown reply's
        own tokens/s beside them all (from each reply's ``progress`` events)."""
        now = time.monotonic()
        if not force and now - self._batch_at < BATCH_S:
            return
        self._batch_at = now
        replies = list(self.live.values())
        status = self.query_one(StatusLine)
        if sum(r.answers or 1 for r in replies) < 2:
            status.batch = ""
            return
        decoding = sum(r.answers or 1 for r in replies if r.decoding)
        queued = sum(r.answers or 1 for r in replies if r.queued)
        total = sum(r.tokens_per_s for r in replies if r.decoding)
        shown = self.shown_live()
        own = f"this {shown.tokens_per_s:.1f} of " if shown and shown.decoding else ""
        waiting = f", {queued} queued" if queued else ""
        status.batch = f"batch {decoding} decoding{waiting} │ {own}{total:.1f} tok/s"

    @on(ReplyStarted)
    async def _reply_started(self, message: ReplyStarted) -> None:
        """The prompt is stored: the reply shown since it was sent gets its row."""
        live, turn = message.live, message.turn
        if live is None:  # a turn that was not sent from the prompt
            live = self._external = LiveReply(turn.conversation_id, message.prompt)
            self.live[live.key] = live
            await self._open_reply(live, message.prompt)
            self.call_after_refresh(self._prepare, live)
        live.conversation_id, live.user_id = turn.conversation_id, turn.user_message_id
        live.turn_started = True
        if live.shown:
            self.conversation_id = turn.conversation_id
        if live.prompt_widget is not None:
            live.prompt_widget.message_id = turn.user_message_id
        if live.answers:
            live.reply_ids.append(turn.reply_message_id)
            return
        live.reply_ids = [turn.reply_message_id]
        if live.widget is not None:
            live.widget.message_id = turn.reply_message_id

    def _prepare(self, live: LiveReply) -> None:
        if live.widget is not None:
            live.widget.prepare()

    @on(ReplyChunk)
    async def _reply_chunk(self, message: ReplyChunk) -> None:
        live = self._live_of(message)
        if live is None:
            return
        live.text += message.text
        if message.text:
            live.decoding, live.queued = True, None
        for event in message.gauges:
            if isinstance(event, Progress):
                live.tokens_per_s = event.tokens_per_s
        self.show_batch()
        if live.widget is None:  # its conversation is not shown: nothing to draw
            self._frame_shown(live)
            return
        # One screen update for the frame's text and gauges, not one for each; and the
        # updates new Markdown blocks ask for while they settle in after their mount
        # join it (each one lays out and paints the whole chat pane).
        batch = ExitStack()
        batch.enter_context(self.batch_update())
        try:
            if message.text:
                await live.widget.append(message.text)
            usage = [e for e in message.gauges if isinstance(e, KVUsage)]
            if usage:
                self.show_kv(usage)
            for event in message.gauges:
                if not isinstance(event, KVUsage):
                    await self.show_event(event, live)
        finally:
            self.set_timer(SETTLE_S, lambda: self._end_frame(batch, live))

    def _end_frame(self, batch: ExitStack, live: LiveReply) -> None:
        batch.close()
        # The screen resumes its update timer only when it goes idle: an update that
        # fell due while the batch was open waits for that (App.batch_update prompts
        # the app, not the screen), and a reply would otherwise show in bursts.
        if self.screen_stack:  # not when the app is closing
            self.screen.check_idle()
            self.call_after_refresh(self._frame_shown, live)

    def _frame_shown(self, live: LiveReply) -> None:
        """The screen has shown a frame: the reply worker may send the next."""
        live.frames_unshown = max(0, live.frames_unshown - 1)
        if live.gather is not None and live.key in self.live:
            live.gather.tick()

    @on(ReplyRetrying)
    async def _reply_retrying(self, message: ReplyRetrying) -> None:
        live = self._live_of(message)
        if live is None:
            return
        live.text = ""
        if live.widget is not None:
            await live.widget.start_attempt(message.retry)
            live.widget.set_note(f"{live.route_note}attempt {message.retry.attempt} · "
                                 f"{message.retry.strategy.replace('_', ' ')} · "
                                 f"{message.retry.reason}")

    @on(ReplyFinished)
    async def _reply_finished(self, message: ReplyFinished) -> None:
        live, done = self._live_of(message), message.done
        if live is None:
            return
        if live.widget is not None:
            note = live.route_note + done_note(done, live.widget.strategies)
            await live.widget.finish(note, final_text=done.text)
        shown = live.shown
        if not self._end_reply(live):
            return
        if not shown:
            self.notify(self._conversation_name(live), title="Reply finished")
            return
        if done.completion_tokens > 1:
            self.query_one(StatusLine).tokens_per_s = done.tokens_per_s
        if done.attempts > 1 or done.output_ok is False:
            self.notify("Ctrl+R reviews its attempts.", title=f"Reply took {done.attempts} "
                        "attempts", severity="warning" if done.output_ok is False
                        else "information")

    def _conversation_name(self, live: LiveReply) -> str:
        cid = live.conversation_id
        if cid is None:
            return "a new conversation"
        try:
            return f"#{cid} {self.store.get_conversation(cid).title}"  # type: ignore[attr-defined]
        except KvchatError:
            return f"#{cid}"

    @on(ReplyFailed)
    async def _reply_failed(self, message: ReplyFailed) -> None:
        live = self._live_of(message)
        if live is None:
            return
        shown = live.shown
        if live.columns is not None:  # N answers that never started
            await live.columns.remove()
            live.columns = None
        if shown and not live.turn_started:
            await self._withdraw_prompt(live)
        if live.widget is not None:
            await live.widget.finish(f"error: {message.message}")
        elif shown:
            await self.query_one(ChatPane).add_notice(f"error: {message.message}")
        if not self._end_reply(live):
            return
        if message.code == "engine_died":
            self._engine_died = True
            self.query_one(StatusLine).state = "engine stopped: the next message reloads it"
        where = "" if shown else f" in {self._conversation_name(live)}"
        self.notify(message.message, title=f"Reply failed{where}", severity="error")

    async def _withdraw_prompt(self, live: LiveReply) -> None:
        """The engine refused the prompt before storing it (text that is not valid
        UTF-8, a route that does not exist...): it leaves the conversation, and goes
        back into the message box to be edited, unless something new was typed there
        meanwhile."""
        sent, live.prompt_widget = live.prompt_widget, None
        reply, live.widget = live.widget, None
        await self.query_one(ChatPane).remove_children(
            [widget for widget in (sent, reply) if widget is not None])
        prompt = self.query_one(PromptInput)
        if sent is not None and not prompt.text:
            prompt.text = sent.text
            prompt.move_cursor(prompt.document.end)

    def _end_reply(self, live: LiveReply) -> bool:
        """The reply is over; False if the app closed meanwhile (the reply's Markdown
        going in takes a few awaits), and there is nothing left to show."""
        self.live.pop(live.key, None)
        if self._external is live:
            self._external = None
        live.detach()
        live.gather = None
        if not self.query(StatusLine):
            return False
        if getattr(self, "ready", False) and not self._engine_died:
            self.show_state()
        self.show_batch(force=True)
        if not self.live:
            self.query_one(PromptInput).cursor_blink = self._blink
            if self.yield_cpu:
                self.call_after_refresh(settle_heap)
        self.refresh_bindings()
        return True

    @on(EngineEvent)
    async def _engine_event(self, message: EngineEvent) -> None:
        live = self._live_of(message)
        if live is not None and live.widget is None:
            if live.columns is None:  # off screen: only where it stands in the queue
                self.note_queue(live, message.event)
            return
        await self.show_event(message.event, live)
