"""The keys, and what each pane shows."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

HELP = """\
# kvchat

**Enter** sends · **Shift+Enter** or **Ctrl+J** adds a line · **Up/Down** on the first or
last line walk the messages you sent (earlier sessions' too) · **PageUp/PageDown**
scroll the conversation · **Esc** or **Ctrl+C** stops the shown conversation's reply ·
**Tab** moves to the conversation (Up, PageUp, Home scroll it); typing goes back to the message box.

| key | does |
| --- | --- |
| Ctrl+P | command palette: every action below, themes, routes, Switch model |
| Ctrl+N | new conversation |
| Ctrl+O | conversations: open, rename (r), delete (d), export (m / j) |
| Ctrl+R | retried replies, attempt by attempt |
| Ctrl+G | regenerate: a new reply to the last message, beside the one shown |
| Ctrl+T | three answers side by side (`--parallel 3`): 1/2/3 keeps one, two versions |
| Alt+Up / Alt+Down | the focus to the message before / after (from the message box: the last) |
| Enter (on your message) | edit it in the message box: Enter sends a new version, Esc leaves |
| Alt+Left / Alt+Right | previous / next version of the focused message (else the last reply) |
| Ctrl+F | search every conversation; Enter opens the hit where it is |
| F8 | context map: which messages the model still has |
| Ctrl+Y | copy the last reply |
| Ctrl+B | copy the last code block of the last reply (the palette lists each one) |
| F1 | this help |
| F2 / F3 | show or hide the memory / KV-cache pane |
| F4 | side panes narrow, normal or wide |
| F5 | why the last message went where it went |
| Ctrl+Q | quit |

`/route NAME message` sends one message through a route (code, qa, summarize, chat).

**Versions**: a regenerated reply and an edited message are kept beside the old ones;
a message with others shows `‹ 2/3 ›`, and the next message continues the path shown.
*Branch from here* (Ctrl+P) copies the path down to the focused message into a new
conversation. A message the model no longer has whole has a dim (evicted) or amber
(partly evicted or cut) left edge; its tooltip and the context map (F8) say more.

**Memory pane**: the memory budget split into weights on the GPU and the CPU, KV cache
(used, reserved for the reply, idle), compute buffers and free; the layer split; the
plan against what llama.cpp allocated. It turns to the warning colour when less than
10% of the budget is free, the error colour under 3%.

**KV-cache pane**: cells in use against the whole context over time (the reply's
reserve drawn above them) and every eviction: time, reason, tokens dropped, the cache
positions, and how long the bookkeeping and the shift took.

Panes hide themselves under 100 columns until F2 or F3 asks for them.
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,f1,q", "dismiss", "Close")]

    def __init__(self) -> None:
        super().__init__(classes="dialog")

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog-box", id="help"):
            yield Markdown(HELP)
