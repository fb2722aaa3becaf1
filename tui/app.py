"""The Textual app: chat pane, input box, status line.

The app sees the model only through ``engine.api.ChatEngine`` and the store through
``ChatSession``. Workers talk to the UI by posting messages; handlers own widgets.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import Footer, Input

from engine.api import ChatEngine
from engine.config import KvchatConfig, default_config_path
from engine.errors import KvchatError
from engine.events import (
    Done,
    Error,
    KVUsage,
    Progress,
    PromptTruncated,
    RouteDecision,
    TokenChunk,
    TurnStarted,
)
from engine.routing import RouteService
from engine.session import ChatSession
from engine.store import Store
from tui.messages import (
    EngineEvent,
    ModelFailed,
    ModelReady,
    PromptSubmitted,
    ReplyChunk,
    ReplyFailed,
    ReplyFinished,
    ReplyStarted,
)
from tui.themes import bundled_theme_files, load_themes
from tui.widgets.chat_pane import ChatPane, ReplyMessage, done_note, route_note
from tui.widgets.status_line import StatusLine


class KvchatApp(App[int]):
    CSS_PATH = Path(__file__).with_name("app.tcss")
    TITLE = "kvchat"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel_reply", "Cancel reply", priority=True),
        Binding("ctrl+c", "cancel_reply", "Cancel reply", show=False, priority=True),
        Binding("ctrl+q", "quit", "Quit"),
    ]

    def __init__(self, config: KvchatConfig, engine: ChatEngine, store: Store,
                 conversation_id: int | None = None, routes: RouteService | None = None,
                 route: str | None = None) -> None:
        super().__init__()
        self.config = config
        self.engine = engine
        self.store = store
        self.routes = routes or RouteService.from_config(config)
        self.session = ChatSession(engine, store, config.chat.system_prompt,
                                   routes=self.routes)
        self.route = route
        """A route for every message (``--route``); ``/route NAME`` overrides one."""
        self._route_note = ""
        self.conversation_id = conversation_id
        self.ready = False
        self.replying = False
        self._reply: ReplyMessage | None = None

    def compose(self) -> ComposeResult:
        yield ChatPane(id="chat")
        yield Input(placeholder="Loading the model…", id="prompt")
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
        if self.config.ui.theme in self.available_themes:
            self.theme = self.config.ui.theme
        else:
            self.notify(f"unknown theme {self.config.ui.theme!r}", severity="warning")
        if self.conversation_id is not None:
            await self._show_history(self.conversation_id)
        self.query_one("#prompt", Input).focus()
        self.load_model()

    def user_theme_files(self) -> list[Path]:
        folder = default_config_path().parent / "themes"
        return sorted(folder.glob("*.toml")) if folder.is_dir() else []

    async def _show_history(self, conversation_id: int) -> None:
        pane = self.query_one(ChatPane)
        for row in self.store.messages(conversation_id):
            if row.role == "user":
                await pane.add_user(row.content)
            elif row.role == "assistant":
                note = "" if row.status == "complete" else row.status
                await pane.add_reply(row.content, note)

    # -- model ----------------------------------------------------------------------

    @work(exclusive=True, group="load", exit_on_error=False)
    async def load_model(self) -> None:
        try:
            info = await self.engine.start()
        except KvchatError as exc:
            self.post_message(ModelFailed(exc.message))
            return
        self.post_message(ModelReady(info))

    @on(ModelReady)
    def _model_ready(self, message: ModelReady) -> None:
        self.ready = True
        status = self.query_one(StatusLine)
        status.model_name = message.info.name
        status.backend = message.info.backend
        status.ctx_total = message.info.n_ctx
        status.state = "ready"
        self.query_one("#prompt", Input).placeholder = "Message (Enter sends, Esc cancels)"

    @on(ModelFailed)
    def _model_failed(self, message: ModelFailed) -> None:
        self.query_one(StatusLine).state = "model failed to load"
        self.query_one("#prompt", Input).placeholder = "The model could not be loaded"
        self.notify(message.message, title="Model", severity="error", timeout=30)

    # -- the reply chain --------------------------------------------------------------

    @on(Input.Submitted, "#prompt")
    def _submit(self, event: Input.Submitted) -> None:
        text = event.value
        if not text.strip():
            return
        if not self.ready:
            self.notify("The model is still loading.", severity="warning")
            return
        if self.replying:
            self.notify("A reply is in flight: Esc cancels it.", severity="warning")
            return
        route = self.route
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
        event.input.value = ""
        self.post_message(PromptSubmitted(text, route))

    @on(PromptSubmitted)
    def _send(self, message: PromptSubmitted) -> None:
        self.replying = True
        self.query_one(StatusLine).state = "generating…"
        self.generate_reply(message.text, message.route)

    @work(exclusive=True, group="reply", exit_on_error=False)
    async def generate_reply(self, text: str, route: str | None = None) -> None:
        try:
            async for event in self.session.send(text, self.conversation_id,
                                                  self.config.sampling, route=route):
                if isinstance(event, TurnStarted):
                    self.post_message(ReplyStarted(event, text))
                elif isinstance(event, TokenChunk):
                    self.post_message(ReplyChunk(event.text, len(event.token_ids)))
                elif isinstance(event, Done):
                    self.post_message(ReplyFinished(event))
                elif isinstance(event, Error):
                    self.post_message(ReplyFailed(event.code, event.message))
                else:
                    self.post_message(EngineEvent(event))
        except KvchatError as exc:
            self.post_message(ReplyFailed(exc.code, exc.message))

    @on(ReplyStarted)
    async def _reply_started(self, message: ReplyStarted) -> None:
        self.conversation_id = message.turn.conversation_id
        pane = self.query_one(ChatPane)
        await pane.add_user(message.prompt)
        self._reply = await pane.add_reply()
        pane.anchor()

    @on(ReplyChunk)
    async def _reply_chunk(self, message: ReplyChunk) -> None:
        if self._reply is not None:
            await self._reply.append(message.text)

    @on(ReplyFinished)
    async def _reply_finished(self, message: ReplyFinished) -> None:
        if self._reply is not None:
            await self._reply.finish(self._route_note + done_note(message.done))
        self._reply = None
        self.replying = False
        status = self.query_one(StatusLine)
        status.state = "ready"
        if message.done.completion_tokens > 1:
            status.tokens_per_s = message.done.tokens_per_s

    @on(ReplyFailed)
    async def _reply_failed(self, message: ReplyFailed) -> None:
        if self._reply is not None:
            await self._reply.finish(f"error: {message.message}")
        else:
            await self.query_one(ChatPane).add_notice(f"error: {message.message}")
        self._reply = None
        self.replying = False
        self.query_one(StatusLine).state = "ready"
        self.notify(message.message, title="Reply failed", severity="error")

    @on(EngineEvent)
    async def _engine_event(self, message: EngineEvent) -> None:
        event = message.event
        if isinstance(event, RouteDecision):
            self._route_note = route_note(event) + " · "
            if self._reply is not None:
                self._reply.set_note(route_note(event))
        elif isinstance(event, KVUsage):
            status = self.query_one(StatusLine)
            status.ctx_used = event.used_cells
            status.evicted = event.evicted_total
        elif isinstance(event, Progress):
            self.query_one(StatusLine).tokens_per_s = event.tokens_per_s
        elif isinstance(event, PromptTruncated):
            # Said where it happened, above the reply, and not only in a toast.
            pane = self.query_one(ChatPane)
            if self._reply is not None:
                await pane.add_notice(f"note: {event.message}", before=self._reply)
            else:
                await pane.add_notice(f"note: {event.message}")
            self.notify(event.message, title="Message cut", severity="warning")

    # -- actions ------------------------------------------------------------------------

    def action_cancel_reply(self) -> None:
        if self.replying:
            self.engine.cancel()

    async def on_unmount(self) -> None:
        await self.engine.close()
