"""The app's actions in Textual's command palette (Ctrl+P)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from typing import TYPE_CHECKING

from textual.command import DiscoveryHit, Hit, Hits, Provider

if TYPE_CHECKING:
    from tui.app import KvchatApp


class KvchatCommands(Provider):
    def _commands(self) -> Iterator[tuple[str, Callable[[], object], str]]:
        app: KvchatApp = self.app  # type: ignore[assignment]
        yield "New conversation", app.action_new_conversation, "Start an empty conversation"
        yield "Conversations", app.action_conversations, "Open, rename, delete, export"
        yield ("Switch model", app.action_switch_model,
               "Load another model found here; the conversation goes on")
        yield "Retried replies", app.action_retries, "Review malformed outputs and retries"
        yield ("Regenerate the last reply", app.action_regenerate,
               "A new reply beside the one shown (Ctrl+G)")
        yield ("Three answers", app.action_three_answers,
               "To the message box's text (else the last message), side by side: "
               "1/2/3 keeps one (Ctrl+T; needs --parallel 3)")
        yield ("Edit a message", app.action_edit_message,
               "Send one of your messages again, changed (Enter on the message)")
        yield ("Branch from here", app.action_branch,
               "A new conversation with the path down to the focused (else the last) message")
        yield ("Next version of a message", partial(app.action_sibling, 1),
               "Of the focused message, else the last reply (Alt+Right; Alt+Left back)")
        yield ("Search conversations", app.action_search,
               "Every message and title, any branch (Ctrl+F)")
        yield ("Context map", app.action_context_map,
               "Which messages the model still has, evicted or restored (F8)")
        yield "Toggle memory pane", partial(app.action_toggle_pane, "memory"), "F2"
        yield "Toggle KV-cache pane", partial(app.action_toggle_pane, "kv"), "F3"
        yield "Resize side panes", app.action_resize_side, "Narrow, normal or wide (F4)"
        yield "Route detail", app.action_route_detail, "Why the last message went where"
        yield "Copy last reply", app.action_copy_reply, "To the clipboard"
        yield "Copy last code block", app.action_copy_code, "To the clipboard (Ctrl+B)"
        blocks = app.last_code_blocks()
        if len(blocks) > 1:
            for number, block in enumerate(blocks, 1):
                first = next((line.strip() for line in block.code.splitlines()
                              if line.strip()), "")
                language = f" ({block.language})" if block.language else ""
                yield (f"Copy code block {number}{language}: {first[:40]}",
                       partial(app.action_copy_code, number),
                       f"Code block {number} of {len(blocks)} of the last reply")
        yield ("Export conversation as Markdown", partial(app.action_export, "md"),
               "Into the data dir's exports/")
        yield ("Export conversation as JSON", partial(app.action_export, "json"),
               "Into the data dir's exports/")
        yield "Help", app.action_help, "Keys and panes"
        yield ("Route next message: automatic", partial(app.action_next_route, ""),
               "Let the router choose")
        for name in app.session.route_names:
            yield (f"Route next message: {name}", partial(app.action_next_route, name),
                   f"Send the next message through the {name} template")

    async def discover(self) -> Hits:
        for name, run, help_text in self._commands():
            yield DiscoveryHit(name, run, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, run, help_text in self._commands():
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), run, help=help_text)
