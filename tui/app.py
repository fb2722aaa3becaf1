"""The Textual app: chat pane and message box, memory and KV-cache panes, status line.

The app sees the model only through ``engine.api.ChatEngine`` and the store through
``ChatSession``. Workers talk to the UI by posting messages; handlers own widgets.
Actions that manage conversations and panes live in :mod:`tui.app_actions`, how a
reply shows in :mod:`tui.app_replies`, where each engine event shows in
:mod:`tui.app_events`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.notifications import SeverityLevel
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
    Retry,
    RouteDecision,
    TurnStarted,
)
from engine.session import ChatSession
from engine.store import Store
from tui.app_actions import AppActions
from tui.app_answers import AnswerActions
from tui.app_find import FindActions
from tui.app_replies import ReplyView
from tui.app_tree import TreeActions
from tui.coalesce import ReplyCoalescer, pacing
from tui.commands import KvchatCommands
from tui.config import ui_settings
from tui.heap import settle_heap, tune_collector
from tui.live import LiveReply
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
from tui.prefs import load_prefs, prefs_path, save_prefs
from tui.safe_text import visible
from tui.themes import bundled_theme_files, load_themes
from tui.ui_priority import GilHandover, yield_cpu_to_decoding
from tui.widgets.chat_pane import ChatPane
from tui.widgets.kv_pane import KVPane
from tui.widgets.memory_pane import MemoryPane
from tui.widgets.prompt_input import PromptInput
from tui.widgets.status_line import StatusLine


class KvchatApp(ReplyView, AnswerActions, AppActions, TreeActions, FindActions, App[int]):
    CSS_PATH = Path(__file__).with_name("app.tcss")
    TITLE = "kvchat"
    COMMANDS: ClassVar = App.COMMANDS | {KvchatCommands}
    # Under 100 columns the side panes hide until asked for (F2 / F3).
    HORIZONTAL_BREAKPOINTS: ClassVar = [(0, "-narrow"), (100, "-wide")]
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "escape", "Cancel", priority=True),
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
        Binding("f8", "context_map", "Context map", show=False),
        Binding("ctrl+g", "regenerate", "Regenerate", show=False),
        Binding("ctrl+t", "three_answers", "Three answers", show=False),
        Binding("ctrl+f", "search", "Search", show=False),
        Binding("alt+left", "sibling(-1)", "Previous version", show=False),
        Binding("alt+right", "sibling(1)", "Next version", show=False),
        Binding("alt+up", "focus_message(-1)", "Previous message", show=False),
        Binding("alt+down", "focus_message(1)", "Next message", show=False),
        Binding("ctrl+q", "quit", "Quit", show=False),
    ]

    def __init__(self, config: KvchatConfig, engine: ChatEngine, store: Store,
                 conversation_id: int | None = None, session: ChatSession | None = None,
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
        self.session = session or ChatSession.for_config(engine, store, config)
        """The conversation over ``engine``, routed; by default with the config's routes."""
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
        self._engine_died = False
        """The last reply ended with the engine process's death (the next reloads it)."""
        self.live: dict[int, LiveReply] = {}
        """The replies streaming now, in any conversation (``tui.live``)."""
        self._external: LiveReply | None = None
        """A turn the app did not send (its messages carry no reply of their own)."""
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
        for problem in self.session.route_problems:
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
        self.use_model(message.info, message.memory)
        if self.yield_cpu and self.ui.ui_nice:
            yield_cpu_to_decoding(self.ui.ui_nice)
        if self.yield_cpu:
            tune_collector()
            self.call_after_refresh(settle_heap)
        if (self.yield_cpu and self.ui.gil_switch_ms
                and self.engine.generates_on_thread):
            self._gil.shorten(self.ui.gil_switch_ms / 1000)

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
        elif event.worker.group in ("reply", "answers"):
            live = next((r for r in self.live.values() if r.worker is event.worker), None)
            self.post_message(ReplyFailed("internal", text, live))
        else:
            self.notify(text, severity="error", timeout=30)

    @on(ModelFailed)
    def _model_failed(self, message: ModelFailed) -> None:
        self.query_one(StatusLine).state = "model failed to load"
        self.query_one(PromptInput).placeholder = "The model could not be loaded"
        self.notify(message.message, title="Model", severity="error", timeout=30)

    def notify(self, message: str, *, title: str = "", severity: SeverityLevel = "information",
               timeout: float | None = None, markup: bool = False) -> None:
        """Every toast (the screens' too) as plain text, escaped: they quote names,
        titles and errors, which are neither markup nor terminal commands."""
        super().notify(visible(message), title=visible(title), severity=severity,
                       timeout=timeout, markup=False)

    # -- the reply chain --------------------------------------------------------------

    @property
    def replying(self) -> bool:
        """The conversation shown has a reply streaming (others may stream elsewhere)."""
        return self.shown_live() is not None

    def shown_live(self) -> LiveReply | None:
        return next((live for live in self.live.values() if live.shown), None)

    def _may_send(self) -> bool:
        if not self.ready:
            self.notify("The model is still loading.", severity="warning")
            return False
        if self.replying:
            self.notify("A reply is in flight: Esc cancels it.", severity="warning")
            return False
        if self.live and self.engine.parallel_replies == 1:
            self.notify("A reply in another conversation is in flight: kvchat --parallel N "
                        "streams several.", severity="warning")
            return False
        return True

    @on(PromptInput.Submitted, "#prompt")
    def _submit(self, event: PromptInput.Submitted) -> None:
        text = event.text
        if not text.strip() or not self._may_send():
            return
        route = self.next_route or self.route
        if text.startswith("/route"):
            name, _, rest = text.removeprefix("/route").strip().partition(" ")
            try:
                route = self.session.check_route(name)
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
        self.post_message(PromptSubmitted(text, route, edit_of=self.take_edit()))

    @on(PromptSubmitted)
    async def _send(self, message: PromptSubmitted) -> None:
        if self.replying:  # a second prompt queued behind the first
            self.notify("A reply is in flight: Esc cancels it.", severity="warning")
            return
        live = LiveReply(self.conversation_id, message.text)
        self.live[live.key] = live
        # The prompt, its empty reply and the footer's new keys are laid out and drawn
        # before the engine starts: at once for the user, and none of that screen work
        # lands among the decode's tokens, where it would cost their time.
        if message.edit_of is not None:
            live.branch = await self.open_edit(message.edit_of)
        await self._open_reply(live, message.text)
        # After a crash the engine loads the model again before this reply starts.
        self.show_state("loading the model again…" if self._engine_died else None)
        self.refresh_bindings()
        self.call_after_refresh(self._start_reply, live, message.route)

    def _start_reply(self, live: LiveReply, route: str | None) -> None:
        if live.widget is not None:
            live.widget.prepare()
        live.worker = self.generate_reply(live, route)

    @work(group="reply", exit_on_error=False)
    async def generate_reply(self, live: LiveReply, route: str | None = None) -> None:
        # Events are gathered here so that the message queue carries one update per
        # frame, whatever the decode rate (see tui.coalesce).
        def post_event(event: Event) -> None:
            if isinstance(event, TurnStarted):
                self.post_message(ReplyStarted(event, live.prompt, live))
            elif isinstance(event, Retry):
                self.post_message(ReplyRetrying(event, live))
            elif isinstance(event, Done):
                self.post_message(ReplyFinished(event, live))
            elif isinstance(event, Error):
                self.post_message(ReplyFailed(event.code, event.message, live))
            else:
                self.post_message(EngineEvent(event, live))

        def post_frame(chunk: str, n: int, gauges: list[Event]) -> None:
            live.frames_unshown += 1
            self.post_message(ReplyChunk(chunk, n, gauges, live))

        pace = pacing(self.source_view)
        gather = live.gather = ReplyCoalescer(post_frame, post_event,
                                              ready=lambda: live.frames_unshown == 0,
                                              frame_s=pace.frame_s, gauge_s=pace.gauge_s)
        try:
            async for event in self.reply_stream(live, route):
                gather.add(event)
            gather.flush()
        except KvchatError as exc:
            gather.flush()
            self.post_message(ReplyFailed(exc.code, exc.message, live))

    # -- cancel -------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # Idle, Esc and Ctrl+C go on to the focused widget (copy, closing a dialog),
        # unless Esc leaves a message being edited.
        if action == "escape":
            return self.replying or self.editing is not None
        return action != "cancel_reply" or self.replying

    def action_escape(self) -> None:
        if self.replying:
            self.action_cancel_reply()
        elif self.editing is not None:
            self.leave_edit(restore=True)

    def action_cancel_reply(self) -> None:
        """The shown conversation's reply stops; replies elsewhere stream on."""
        live = self.shown_live()
        if live is not None:
            live.cancel.set()

    async def on_unmount(self) -> None:
        self._gil.restore()
        await self.engine.close()
