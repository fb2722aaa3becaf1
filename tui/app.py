"""The Textual app: chat pane and message box, memory and KV-cache panes, status line.

The app sees the model only through ``engine.api.ChatEngine`` and the store through
``ChatSession``. Workers talk to the UI by posting messages; handlers own widgets.
Actions that manage conversations and panes live in :mod:`tui.app_actions`.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import ExitStack
from pathlib import Path
from typing import ClassVar

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.theme import Theme
from textual.widgets import Footer
from textual.worker import Worker, WorkerState

from engine.api import ChatEngine
from engine.config import KvchatConfig, default_config_path
from engine.errors import KvchatError, StoreError
from engine.events import (
    Done,
    Error,
    Event,
    KVUsage,
    Retry,
    RouteDecision,
    TurnStarted,
)
from engine.routing.service import RouteService
from engine.session import ChatSession
from engine.store import Store
from tui.app_actions import AppActions
from tui.app_events import EventPanes
from tui.coalesce import ReplyCoalescer, pacing
from tui.commands import KvchatCommands
from tui.config import ui_settings
from tui.heap import settle_heap, tune_collector
from tui.messages import (
    EngineEvent,
    ModelFailed,
    ModelReady,
    PromptSubmitted,
    ReplyChunk,
    ReplyFailed,
    ReplyFinished,
    ReplyRetrying,
    ReplyStarted,
)
from tui.notes import done_note
from tui.prefs import load_prefs, prefs_path, save_prefs
from tui.themes import bundled_theme_files, load_themes
from tui.ui_priority import GilHandover, streams_as_source, yield_cpu_to_decoding
from tui.widgets.chat_pane import ChatPane, ReplyMessage, UserMessage
from tui.widgets.kv_pane import KVPane
from tui.widgets.memory_pane import MemoryPane
from tui.widgets.prompt_input import PromptInput
from tui.widgets.status_line import StatusLine

SETTLE_S = 0.05
"""How long a streamed frame holds screen updates back after it is applied."""


class KvchatApp(EventPanes, AppActions, App[int]):
    CSS_PATH = Path(__file__).with_name("app.tcss")
    TITLE = "kvchat"
    COMMANDS: ClassVar = App.COMMANDS | {KvchatCommands}
    # Under 100 columns the side panes hide until asked for (F2 / F3).
    HORIZONTAL_BREAKPOINTS: ClassVar = [(0, "-narrow"), (100, "-wide")]
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel_reply", "Cancel", priority=True),
        Binding("ctrl+c", "cancel_reply", "Cancel reply", show=False, priority=True),
        Binding("ctrl+n", "new_conversation", "New"),
        Binding("ctrl+o", "conversations", "Chats"),
        Binding("ctrl+r", "retries", "Retries", priority=True),
        Binding("ctrl+y", "copy_reply", "Copy", priority=True),
        Binding("ctrl+b", "copy_code", "Copy code", show=False),
        Binding("f1", "help", "Help"),
        Binding("f2", "toggle_pane('memory')", "Memory"),
        Binding("f3", "toggle_pane('kv')", "KV"),
        Binding("f4", "resize_side", "Resize", show=False),
        Binding("f5", "route_detail", "Route", show=False),
        Binding("ctrl+q", "quit", "Quit", show=False),
    ]

    def __init__(self, config: KvchatConfig, engine: ChatEngine, store: Store,
                 conversation_id: int | None = None, routes: RouteService | None = None,
                 route: str | None = None, prefs_file: Path | None = None,
                 pinned: Iterable[str] = (), ignore_eos: bool = False,
                 yield_cpu: bool = False) -> None:
        super().__init__()
        self.yield_cpu = yield_cpu
        """Lower the UI thread's priority and shorten Python's switch interval once the
        model is loaded (tui.ui_priority); the ``kvchat`` command does, embedders and
        tests keep their thread and process as they are."""
        self._gil = GilHandover()
        self.config = config
        self.ui = ui_settings(config)
        """The app's own settings, the config's ``[ui]`` table."""
        self.engine = engine
        self.store = store
        self.routes = routes or RouteService.from_config(config)
        self.session = ChatSession(engine, store, config.chat.system_prompt,
                                   routes=self.routes)
        self.route = route
        """A route for every message (``--route``); ``/route NAME`` overrides one."""
        self.pinned = frozenset(pinned)
        """Sampling fields set on the command line, which a route's template keeps."""
        self.ignore_eos = ignore_eos
        """Decode every reply to max_tokens, as ``kvchat ask --ignore-eos`` (benchmarks)."""
        self.next_route: str | None = None
        """A route for the next message only, chosen in the command palette."""
        self.last_route: RouteDecision | None = None
        self.conversation_id = conversation_id
        self.ready = False
        self.replying = False
        self._engine_died = False
        """The last reply ended with the engine process's death (the next reloads it)."""
        self._reply: ReplyMessage | None = None
        self._prompt_shown: UserMessage | None = None
        """The prompt in flight, shown before the engine stores it."""
        self._turn_started = True
        """Has the engine stored the prompt in flight (``ReplyStarted``)?"""
        self._frames_unshown = 0
        """Frames posted by the reply worker that the screen has not shown yet."""
        self._gather: ReplyCoalescer | None = None
        """The reply worker's coalescer while a reply streams."""
        self._reply_route = ""
        self._blink = True
        """The prompt's cursor blink, paused while a reply streams."""
        self.source_view = False
        """Replies stream as highlighted source (``ui.stream_view``; set at load)."""
        self.prefs_file = prefs_file or prefs_path()
        self.prefs = load_prefs(self.prefs_file)

    def compose(self) -> ComposeResult:
        with Horizontal(id="main"):
            with Vertical(id="chat-column"):
                yield ChatPane(id="chat")
                yield PromptInput(placeholder="Loading the model…", id="prompt")
            with Vertical(id="side", classes=f"-auto -side-{self.prefs.side_width}"):
                yield MemoryPane(id="memory")
                yield KVPane(id="kv")
        yield StatusLine(id="status")
        yield Footer()

    async def on_mount(self) -> None:
        themes, problems = load_themes(bundled_theme_files() + self.user_theme_files())
        for theme in themes:
            self.register_theme(theme)
        for problem in problems:
            self.notify(problem, title="Theme skipped", severity="warning")
        for problem in self.routes.templates.problems:
            self.notify(problem, title="Template skipped", severity="warning")
        wanted = self.prefs.theme or self.ui.theme
        if wanted in self.available_themes:
            self.theme = wanted
        else:
            self.notify(f"unknown theme {wanted!r}", severity="warning")
        self.theme_changed_signal.subscribe(self, self._remember_theme)
        self.apply_pane_prefs()
        if self.conversation_id is not None:
            await self.show_history(self.conversation_id)
        prompt = self.query_one(PromptInput)
        prompt.sent = self._stored_prompts()
        prompt.focus()
        self.load_model()

    def user_theme_files(self) -> list[Path]:
        folder = default_config_path().parent / "themes"
        return sorted(folder.glob("*.toml")) if folder.is_dir() else []

    def _stored_prompts(self) -> list[str]:
        """Messages sent in earlier sessions, for Up in the message box."""
        try:
            return self.store.recent_prompts()
        except StoreError:
            return []  # a history that cannot be read is no reason not to chat

    def _remember_theme(self, theme: Theme) -> None:
        if theme.name != self.prefs.theme:
            self.prefs.theme = theme.name
            save_prefs(self.prefs, self.prefs_file)

    # -- model ----------------------------------------------------------------------

    @work(exclusive=True, group="load", exit_on_error=False)
    async def load_model(self) -> None:
        try:
            info = await self.engine.start()
        except KvchatError as exc:
            self.post_message(ModelFailed(exc.message))
            return
        self.post_message(ModelReady(info, self.engine.memory))

    @on(ModelReady)
    def _model_ready(self, message: ModelReady) -> None:
        self.ready = True
        self.source_view = streams_as_source(self.config, message.info)
        self.engine.pace_events(pacing(self.source_view).relay_gap_s)
        if self.yield_cpu and self.ui.ui_nice:
            yield_cpu_to_decoding(self.ui.ui_nice)
        if self.yield_cpu:
            tune_collector()
            self.call_after_refresh(settle_heap)
        if (self.yield_cpu and self.ui.gil_switch_ms
                and self.engine.generates_on_thread):
            self._gil.shorten(self.ui.gil_switch_ms / 1000)
        status = self.query_one(StatusLine)
        status.model_name = message.info.name
        status.backend = message.info.backend
        status.ctx_total = message.info.n_ctx
        status.state = "ready"
        self.query_one(KVPane).show_empty(message.info.n_ctx)
        pane = self.query_one(MemoryPane)
        pane.show_model(message.info)
        for snapshot in message.memory:
            pane.show_snapshot(snapshot)
        self.query_one(PromptInput).placeholder = \
            "Message (Enter sends, Ctrl+J new line, Esc cancels, F1 help)"

    @on(Worker.StateChanged)
    def _worker_died(self, event: Worker.StateChanged) -> None:
        """A worker ended by an unexpected exception (the engine's documented errors are
        turned into messages inside the workers): say so, instead of a status line that
        says "loading" or "generating" forever."""
        if event.state is not WorkerState.ERROR:
            return
        error = event.worker.error
        text = f"internal error ({type(error).__name__}: {error})"
        self.log.error(f"worker {event.worker.name!r} failed: {text}")
        if event.worker.group == "load":
            self.post_message(ModelFailed(text))
        elif event.worker.group == "reply":
            self.post_message(ReplyFailed("internal", text))
        else:
            self.notify(text, severity="error", timeout=30)

    @on(ModelFailed)
    def _model_failed(self, message: ModelFailed) -> None:
        self.query_one(StatusLine).state = "model failed to load"
        self.query_one(PromptInput).placeholder = "The model could not be loaded"
        self.notify(message.message, title="Model", severity="error", timeout=30)

    # -- the reply chain --------------------------------------------------------------

    @on(PromptInput.Submitted, "#prompt")
    def _submit(self, event: PromptInput.Submitted) -> None:
        text = event.text
        if not text.strip():
            return
        if not self.ready:
            self.notify("The model is still loading.", severity="warning")
            return
        if self.replying:
            self.notify("A reply is in flight: Esc cancels it.", severity="warning")
            return
        route = self.next_route or self.route
        if text.startswith("/route"):
            name, _, rest = text.removeprefix("/route").strip().partition(" ")
            try:
                route = self.routes.check_route(name)
            except KvchatError as exc:
                self.notify(exc.message, title="/route NAME message", severity="warning")
                return
            text = rest.strip()
            if not text:
                self.notify("Write the message after the route: /route NAME message",
                            severity="warning")
                return
        event.prompt.remember(event.text)
        event.prompt.text = ""
        self.next_route = None
        self.query_one(StatusLine).next_route = ""
        self.post_message(PromptSubmitted(text, route))

    @on(PromptSubmitted)
    async def _send(self, message: PromptSubmitted) -> None:
        if self.replying:  # a second prompt queued behind the first
            self.notify("A reply is in flight: Esc cancels it.", severity="warning")
            return
        self.replying = True
        # After a crash the engine loads the model again before this reply starts.
        self.query_one(StatusLine).state = ("loading the model again…" if self._engine_died
                                            else "generating…")
        self.refresh_bindings()
        # The prompt, its empty reply and the footer's new keys are laid out and drawn
        # before the engine starts: at once for the user, and none of that screen work
        # lands among the decode's tokens, where it would cost their time.
        await self._open_reply(message.text)
        self._turn_started = False
        self.call_after_refresh(self._start_reply, message.text, message.route)

    def _start_reply(self, text: str, route: str | None) -> None:
        self._prepare_reply()
        self.generate_reply(text, route)

    def _prepare_reply(self) -> None:
        if self._reply is not None:
            self._reply.prepare()

    async def _open_reply(self, prompt_text: str) -> None:
        pane = self.query_one(ChatPane)
        self._prompt_shown = await pane.add_user(prompt_text)
        self._reply = await pane.add_reply(source_view=self.source_view)
        self._reply_route = ""
        pane.anchor()
        # A blink is a screen update twice a second: decoding's time on shared cores.
        prompt = self.query_one(PromptInput)
        self._blink, prompt.cursor_blink = prompt.cursor_blink, False

    @work(exclusive=True, group="reply", exit_on_error=False)
    async def generate_reply(self, text: str, route: str | None = None) -> None:
        # Events are gathered here so that the message queue carries one update per
        # frame, whatever the decode rate (see tui.coalesce).
        def post_event(event: Event) -> None:
            if isinstance(event, TurnStarted):
                self.post_message(ReplyStarted(event, text))
            elif isinstance(event, Retry):
                self.post_message(ReplyRetrying(event))
            elif isinstance(event, Done):
                self.post_message(ReplyFinished(event))
            elif isinstance(event, Error):
                self.post_message(ReplyFailed(event.code, event.message))
            else:
                self.post_message(EngineEvent(event))

        def post_frame(chunk: str, n: int, gauges: list[Event]) -> None:
            self._frames_unshown += 1
            self.post_message(ReplyChunk(chunk, n, gauges))

        self._frames_unshown = 0
        pace = pacing(self.source_view)
        gather = self._gather = ReplyCoalescer(post_frame, post_event,
                                               ready=lambda: self._frames_unshown == 0,
                                               frame_s=pace.frame_s, gauge_s=pace.gauge_s)
        try:
            async for event in self.session.send(text, self.conversation_id,
                                                  self.config.sampling, route=route,
                                                  pinned=self.pinned,
                                                  ignore_eos=self.ignore_eos):
                gather.add(event)
            gather.flush()
        except KvchatError as exc:
            gather.flush()
            self.post_message(ReplyFailed(exc.code, exc.message))

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
            prompt.text = str(shown.content)
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

    # -- cancel -------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # Idle, Esc and Ctrl+C go on to the focused widget (copy, closing a dialog).
        return action != "cancel_reply" or self.replying

    def action_cancel_reply(self) -> None:
        if self.replying:
            self.engine.cancel()

    async def on_unmount(self) -> None:
        self._gil.restore()
        await self.engine.close()
