"""The message box: several lines, Enter sends, Up/Down on the first/last line walk
the history of sent messages."""

from __future__ import annotations

from typing import ClassVar

from textual import events, on
from textual.binding import Binding, BindingType
from textual.geometry import Region
from textual.message import Message
from textual.strip import Strip
from textual.widget import Widget
from textual.widgets import TextArea


class PromptInput(TextArea):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "history_back", "Previous message", show=False),
        Binding("down", "history_forward", "Next message", show=False),
        # Terminals send Enter and Shift+Enter alike, so a newline also has keys that
        # every terminal can send.
        Binding("shift+enter,ctrl+j,alt+enter", "newline", "New line", show=False),
        # A few lines of message need no pages; the conversation above does.
        Binding("pageup", "app.scroll_chat('page_up')", "Scroll up", show=False),
        Binding("pagedown", "app.scroll_chat('page_down')", "Scroll down", show=False),
    ]

    class Submitted(Message):
        def __init__(self, prompt: PromptInput, text: str) -> None:
            super().__init__()
            self.prompt = prompt
            self.text = text

        @property
        def control(self) -> PromptInput:
            return self.prompt

    def __init__(self, *, placeholder: str = "", id: str | None = None) -> None:
        super().__init__(id=id, soft_wrap=True, show_line_numbers=False,
                         tab_behavior="focus", compact=True, placeholder=placeholder)
        self.sent: list[str] = []
        self._position: int | None = None
        """Index into history while walking it; None when editing a new message."""
        self._draft = ""
        self._themed: tuple[object, ...] = ()
        """What the theme's CSS was last applied for (see :meth:`render_lines`)."""

    def render_lines(self, crop: Region) -> list[Strip]:
        # TextArea applies its theme's CSS before every render, resolving half a dozen
        # component styles (each refresh drops the widget's cache of them): about a
        # millisecond per key press, taken from the decode while a reply streams. The
        # result only changes with the theme, the widget's classes, focus and hover.
        key = (self.app.theme, id(self._theme), frozenset(self.classes), self.has_focus,
               self.mouse_hover, self.disabled)
        if key != self._themed:
            self._themed = key
            return super().render_lines(crop)
        return Widget.render_lines(self, crop)

    @on(TextArea.Changed)
    @on(TextArea.SelectionChanged)
    def _keep_to_itself(self, event: Message) -> None:
        # Nothing above the box listens; each would otherwise wake every container up
        # to the app, twice per key press.
        event.stop()

    def remember(self, text: str) -> None:
        if text.strip() and (not self.sent or self.sent[-1] != text):
            self.sent.append(text)
        self._position = None

    async def _on_key(self, event: events.Key) -> None:
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            self.post_message(self.Submitted(self, self.text))
            return
        await super()._on_key(event)

    def action_newline(self) -> None:
        self.insert("\n")

    def action_history_back(self) -> None:
        if self.cursor_location[0] > 0 or not self.sent:
            self.action_cursor_up()
            return
        if self._position is None:
            self._draft = self.text
            self._position = len(self.sent)
        self._position = max(0, self._position - 1)
        self._show(self.sent[self._position])

    def action_history_forward(self) -> None:
        last_row = self.document.line_count - 1
        if self.cursor_location[0] < last_row or self._position is None:
            self.action_cursor_down()
            return
        self._position += 1
        if self._position >= len(self.sent):
            self._position = None
            self._show(self._draft)
        else:
            self._show(self.sent[self._position])

    def _show(self, text: str) -> None:
        self.text = text
        self.move_cursor(self.document.end)
