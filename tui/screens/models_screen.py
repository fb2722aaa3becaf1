"""Switch model: the models found here, each with its memory plan's verdict; Enter
loads the highlighted one. The listing reads headers and plans through the engine
(``ChatEngine.list_models``), in a worker, never on the screen's thread; a model that
does not fit, or a broken file, is marked and refused with its reason."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.content import Content
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Footer, OptionList, Static
from textual.widgets.option_list import Option

from engine.api import ChatEngine, ModelChoice
from engine.errors import KvchatError
from tui.memory_view import human_bytes
from tui.safe_text import one_line


def human_count(n: int | None) -> str:
    if not n:
        return "-"
    for unit, scale in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}".replace(f".0{unit}", unit)
    return str(n)


def verdict_style(model: ModelChoice) -> str:
    """The theme variable the verdict is drawn in."""
    if not model.runnable:
        return "$text-error"
    return "$text-success" if model.verdict == "fits" else "$text-warning"


def model_label(model: ModelChoice) -> Content:
    """One row: mark, name, what it is, and the verdict in its colour."""
    mark = "▶ " if model.current else ("✗ " if not model.runnable else "  ")
    about = " · ".join(part for part in (
        one_line(model.architecture or ""), human_count(model.parameters),
        one_line(model.quant or ""),
        human_bytes(model.file_bytes) if model.file_bytes is not None else "",
        "chat template" if model.chat_template else "no chat template"
        if model.architecture else "") if part and part != "-")
    return Content.from_markup(
        f"$mark[b]$name[/b]  [dim]$source[/dim]  $about  [{verdict_style(model)}]$verdict[/]",
        mark=mark, name=one_line(model.name), source=one_line(model.source), about=about,
        verdict=one_line(model.verdict))


def refusal(model: ModelChoice) -> str:
    """Why ``model`` cannot be chosen, in one line."""
    if model.verdict == "broken":
        return f"{one_line(model.name)} is broken: {one_line(model.reason)}"
    return f"{one_line(model.name)} does not fit: {one_line(model.reason)}"


class ModelsScreen(ModalScreen[ModelChoice | None]):
    CSS_PATH = Path(__file__).with_name("models_screen.tcss")
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "dismiss(None)", "Close"),
        Binding("r", "rescan", "Rescan"),
    ]

    class Listed(Message):
        """The engine's list of models, read off the screen's thread."""

        def __init__(self, models: list[ModelChoice]) -> None:
            super().__init__()
            self.models = models

    class ListFailed(Message):
        def __init__(self, message: str) -> None:
            super().__init__()
            self.message = message

    def __init__(self, engine: ChatEngine, dirs: list[str]) -> None:
        super().__init__(classes="dialog")
        self.engine = engine
        self.dirs = dirs
        self.models: list[ModelChoice] = []

    def compose(self) -> ComposeResult:
        yield Static("Switch model — Enter loads it; the conversation goes on",
                     id="models-title")
        yield OptionList(id="models")
        yield Static("", id="model-detail", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.action_rescan()

    def action_rescan(self) -> None:
        options = self.query_one("#models", OptionList)
        options.clear_options()
        options.add_option(Option("Reading model headers and planning memory…",
                                  disabled=True))
        self.query_one("#model-detail", Static).update("")
        self.list_models()

    @work(exclusive=True, group="models-list", exit_on_error=False)
    async def list_models(self) -> None:
        try:
            models = await self.engine.list_models(self.dirs)
        except KvchatError as exc:
            self.post_message(self.ListFailed(exc.message))
            return
        self.post_message(self.Listed(models))

    @on(Listed)
    def _listed(self, message: Listed) -> None:
        self.models = message.models
        options = self.query_one("#models", OptionList)
        options.clear_options()
        if not self.models:
            options.add_option(Option("No models found.", disabled=True))
            return
        options.add_options([Option(model_label(m), id=str(i))
                             for i, m in enumerate(self.models)])
        current = next((i for i, m in enumerate(self.models) if m.current), 0)
        options.highlighted = current
        options.focus()

    @on(ListFailed)
    def _list_failed(self, message: ListFailed) -> None:
        options = self.query_one("#models", OptionList)
        options.clear_options()
        options.add_option(Option(Content(f"Cannot list models: {message.message}"),
                                  disabled=True))
        self.notify(message.message, title="Switch model", severity="error")

    def _model(self, option: Option) -> ModelChoice | None:
        return self.models[int(option.id)] if option.id is not None else None

    @on(OptionList.OptionHighlighted, "#models")
    def _highlighted(self, event: OptionList.OptionHighlighted) -> None:
        model = self._model(event.option)
        if model is not None:
            self.query_one("#model-detail", Static).update(
                f"{one_line(model.reason) or model.verdict}\n{one_line(model.path)}")

    @on(OptionList.OptionSelected, "#models")
    def _selected(self, event: OptionList.OptionSelected) -> None:
        model = self._model(event.option)
        if model is None:
            return
        if model.current:
            self.notify(f"{one_line(model.name)} is the model in use.")
        elif not model.runnable:
            self.notify(refusal(model), title="Model refused", severity="error", timeout=15)
        else:
            self.dismiss(model)
