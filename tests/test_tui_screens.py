"""The app's screens over a real store: retried replies, conversations, help, the
command palette. The app runs on the real model, loaded in the background."""

from __future__ import annotations

import json
from pathlib import Path

from textual.pilot import Pilot

from engine.store import Store
from tests.test_tui import make_app, wait_for
from tui.messages import ModelReady, ReplyFinished
from tui.screens.conversations import ConversationsScreen
from tui.screens.help_screen import HelpScreen
from tui.screens.retry_screen import AttemptView, DiffView, RetryScreen
from tui.screens.route_detail import RouteDetailScreen
from tui.widgets.chat_pane import ChatPane, ReplyMessage, UserMessage
from tui.widgets.prompt_input import PromptInput

BROKEN = '{"name": "Ada", "born": 1815,'
FIXED = '{"name": "Ada", "born": 1815}'


def store_retried_reply(store: Store) -> int:
    """A JSON reply that failed once, was repaired, and passed: as the ladder stores it."""
    cid = store.create_conversation("Who was Ada?", "test")
    store.add_message(cid, "user", "Give Ada Lovelace as JSON.")
    mid = store.add_message(cid, "assistant", FIXED,
                            stats={"route": "qa", "attempts": 2, "output_ok": True})
    store.add_attempt(mid, 1, "as_generated", "json", BROKEN, False, found="nothing structured",
                      errors=["line 1 column 30: expecting property name"],
                      completion_tokens=14, elapsed_s=0.4)
    store.add_attempt(mid, 2, "repair", "json", FIXED, True, found="a JSON object with 2 keys")
    return mid


async def run_command(pilot: Pilot[int], command: str) -> None:
    """Type ``command`` in the command palette and run its best match."""
    await pilot.press("ctrl+p")
    await pilot.pause(0.2)
    await pilot.press(*command)
    await pilot.pause(0.5)
    await pilot.press("enter")
    await pilot.pause(0.2)


async def test_retry_screen_shows_attempts_errors_and_diff(kvchat_home: Path) -> None:
    app, seen = make_app(kvchat_home)
    mid = store_retried_reply(app.store)
    async with app.run_test(size=(160, 48), message_hook=seen.append) as pilot:
        await pilot.press("ctrl+r")
        await pilot.pause(0.3)
        screen = app.screen
        assert isinstance(screen, RetryScreen)
        assert [r.message_id for r in screen.replies] == [mid]
        views = list(screen.query(AttemptView))
        assert [v.row.number for v in views] == [1, 2]
        texts = [str(s.render()) for s in views[0].query(".attempt-error")]
        assert texts == ["error: line 1 column 30: expecting property name"]
        heads = str(views[1].query_one(".attempt-head").render())
        assert heads.startswith("attempt 2 · repair · passed")
        diff = views[1].query_one(DiffView).lines
        assert f"-{BROKEN}" in diff and f"+{FIXED}" in diff
        attempts = screen.query_one("#retry-attempts")
        await pilot.press("s")
        assert attempts.has_class("-side-by-side")
        await pilot.press("escape")
        assert not isinstance(app.screen, RetryScreen)


async def test_a_stored_retried_reply_opens_with_its_attempts_folded(kvchat_home: Path) -> None:
    app, seen = make_app(kvchat_home)
    mid = store_retried_reply(app.store)
    app.conversation_id = app.store.list_conversations()[0].id
    async with app.run_test(size=(120, 36), message_hook=seen.append) as pilot:
        await pilot.pause(0.3)
        reply = app.query_one(ReplyMessage)
        assert reply.message_id == mid and reply.text == FIXED
        folded = list(reply.query(".attempt"))
        assert len(folded) == 1
        assert str(folded[0].title).startswith("attempt 1 · as generated · malformed: line 1")
        assert "retried 1× (repair)" in reply.note


async def test_conversations_switch_rename_export_delete(kvchat_home: Path) -> None:
    app, seen = make_app(kvchat_home)
    first = app.store.create_conversation("First talk", "test")
    app.store.add_message(first, "user", "hello first")
    second = app.store.create_conversation("Second talk", "test")
    app.store.add_message(second, "user", "hello second")
    async with app.run_test(size=(120, 36), message_hook=seen.append) as pilot:
        await pilot.press("ctrl+o")
        await pilot.pause(0.2)
        assert isinstance(app.screen, ConversationsScreen)
        # Newest first: Second, then First. Open First.
        await pilot.press("down", "enter")
        await pilot.pause(0.2)
        assert app.conversation_id == first
        assert [str(u.render()) for u in app.query(UserMessage)] == ["hello first"]
        await pilot.press("ctrl+o")
        await pilot.pause(0.2)
        await pilot.press("r")
        await pilot.pause(0.2)
        await pilot.press("ctrl+a", "ctrl+k", *"Renamed", "enter")
        await pilot.pause(0.2)
        assert app.store.get_conversation(second).title == "Renamed"
        await pilot.press("j")
        await pilot.pause(0.1)
        exported = kvchat_home / "exports" / f"conversation-{second}.json"
        assert json.loads(exported.read_text())["title"] == "Renamed"
        await pilot.press("down", "d", "y")
        await pilot.pause(0.3)
        # Deleting the conversation on screen leaves an empty, new one.
        assert [c.id for c in app.store.list_conversations()] == [second]
        assert app.conversation_id is None and not app.query(UserMessage)


async def test_palette_help_and_route_detail(kvchat_home: Path) -> None:
    app, seen = make_app(kvchat_home, route=None)
    async with app.run_test(size=(120, 36), message_hook=seen.append) as pilot:
        await wait_for(seen, ModelReady, pilot)
        await pilot.press("f1")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        # The palette offers the routes for the next message.
        await run_command(pilot, "Route next message: qa")
        assert app.next_route == "qa"
        assert app.query_one("#status").next_route == "qa"
        await pilot.press(*"What is the capital of France?", "enter")
        await wait_for(seen, ReplyFinished, pilot)
        await pilot.pause()
        assert app.last_route is not None and app.last_route.route == "qa"
        await pilot.press("f5")
        assert isinstance(app.screen, RouteDetailScreen)
        detail = str(app.screen.query_one("#route-detail").render())
        assert detail.startswith("route: qa (override") and "signals:" in detail


async def test_typing_elsewhere_goes_to_the_message_box(kvchat_home: Path) -> None:
    """After Tab (or a click) has moved the focus to the conversation, letters typed go
    to the message box, which takes the focus; keys of the pane (Up, PageUp) stay the
    pane's, and a modal screen keeps its own typing."""
    app, seen = make_app(kvchat_home)
    async with app.run_test(size=(120, 36), message_hook=seen.append) as pilot:
        await wait_for(seen, ModelReady, pilot)
        prompt = app.query_one(PromptInput)
        pane = app.query_one(ChatPane)
        pane.focus()
        await pilot.pause()
        await pilot.press("up", "pageup")
        assert app.focused is pane and prompt.text == ""
        await pilot.press(*"Hi there")
        assert app.focused is prompt and prompt.text == "Hi there"
        pane.focus()
        await pilot.press("!")
        assert app.focused is prompt and prompt.text == "Hi there!"
        await pilot.press("f1")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("x")
        assert prompt.text == "Hi there!"


async def test_copy_the_last_reply_and_any_of_its_code_blocks(kvchat_home: Path) -> None:
    """Ctrl+Y copies the last reply, Ctrl+B its last code block, and the palette lists
    every code block when there are several: fences of tildes, longer fences and
    fences inside list items count, a fence line inside a longer fence does not."""
    text = ("Two ways.\n\n```python\nprint(1)\n```\n\n- in a list:\n\n"
            "  ~~~bash\n  echo 2\n  ~~~\n\n"
            "````markdown\n```\nnot the end\n```\n````\n")
    app, seen = make_app(kvchat_home)
    async with app.run_test(size=(120, 36), message_hook=seen.append) as pilot:
        await wait_for(seen, ModelReady, pilot)
        await pilot.press("ctrl+b")
        assert app.clipboard == ""  # no reply yet: a notice, nothing copied
        await app.query_one(ChatPane).add_reply(text)
        await pilot.press("ctrl+y")
        assert app.clipboard == text
        await pilot.press("ctrl+b")
        assert app.clipboard == "```\nnot the end\n```\n"
        await run_command(pilot, "Copy code block 2 (bash)")
        assert app.clipboard == "echo 2\n"


async def test_the_message_history_outlives_the_session(kvchat_home: Path) -> None:
    """Up in an empty message box recalls what was sent in earlier sessions too (the
    store keeps it), newest first."""
    with Store(kvchat_home / "kvchat.db") as store:
        cid = store.create_conversation("before", None)
        store.add_message(cid, "user", "an older question")
        store.add_message(cid, "user", "yesterday's question")
    app, seen = make_app(kvchat_home)
    async with app.run_test(size=(120, 36), message_hook=seen.append) as pilot:
        await wait_for(seen, ModelReady, pilot)
        prompt = app.query_one(PromptInput)
        await pilot.press("up")
        assert prompt.text == "yesterday's question"
        await pilot.press("up")
        assert prompt.text == "an older question"
        await pilot.press("down", "down")
        assert prompt.text == ""


async def test_page_keys_in_the_message_box_scroll_the_conversation(
        kvchat_home: Path) -> None:
    app, seen = make_app(kvchat_home)
    async with app.run_test(size=(100, 30), message_hook=seen.append) as pilot:
        await wait_for(seen, ModelReady, pilot)
        pane = app.query_one(ChatPane)
        for i in range(40):
            await pane.add_user(f"message {i}")
        await pilot.pause()
        prompt = app.query_one(PromptInput)
        await pilot.press(*"draft")
        end = pane.scroll_y
        assert app.focused is prompt and end == pane.max_scroll_y > 0
        await pilot.press("pageup")
        await pilot.pause(0.3)
        assert pane.scroll_y < end and app.focused is prompt and prompt.text == "draft"
        await pilot.press("pagedown", "pagedown")
        await pilot.pause(0.3)
        assert pane.scroll_y == pane.max_scroll_y
