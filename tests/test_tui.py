"""The Textual app driven through its pilot, on the real model and a real store."""

from __future__ import annotations

import asyncio
from pathlib import Path

from textual.message import Message

from engine.config import KvchatConfig, ModelConfig, SamplingConfig
from engine.local_engine import LocalEngine
from engine.store import Store
from tui.app import KvchatApp
from tui.messages import ModelReady, PromptSubmitted, ReplyChunk, ReplyFinished, ReplyStarted
from tui.widgets.chat_pane import ReplyMessage, UserMessage
from tui.widgets.status_line import StatusLine


def make_app(home: Path, max_tokens: int = 16) -> tuple[KvchatApp, list[Message]]:
    config = KvchatConfig(model=ModelConfig(n_ctx=1024),
                          sampling=SamplingConfig(temperature=0.0, max_tokens=max_tokens))
    store = Store(home / "kvchat.db")
    app = KvchatApp(config, LocalEngine(config.model, config.sampling), store)
    return app, []


async def wait_for(seen: list[Message], kind: type[Message], pilot, timeout: float = 60):
    async def poll() -> Message:
        while True:
            for message in seen:
                if isinstance(message, kind):
                    return message
            await pilot.pause(0.05)
    return await asyncio.wait_for(poll(), timeout)


async def test_type_send_and_see_the_streamed_reply(kvchat_home: Path) -> None:
    app, seen = make_app(kvchat_home)
    async with app.run_test(size=(100, 30), message_hook=seen.append) as pilot:
        await wait_for(seen, ModelReady, pilot)
        await pilot.click("#prompt")
        await pilot.press(*"Name a colour.")
        await pilot.press("enter")
        finished = await wait_for(seen, ReplyFinished, pilot)
        await pilot.pause()
        chain = [type(m) for m in seen if isinstance(m, PromptSubmitted | ReplyStarted |
                                                        ReplyChunk | ReplyFinished)]
        assert chain[0] is PromptSubmitted and chain[1] is ReplyStarted
        assert chain[-1] is ReplyFinished and ReplyChunk in chain
        assert app.query_one(UserMessage).render().plain == "Name a colour."
        reply = app.query_one(ReplyMessage)
        assert reply.text == finished.done.text and reply.text.strip()
        status = app.query_one(StatusLine)
        assert status.ctx_used > 0 and "Gemma 3 270m" in status.render()
        # The exchange is in the store.
        rows = app.store.messages(app.conversation_id)
        assert [r.role for r in rows] == ["user", "assistant"]
        assert rows[1].content == finished.done.text


async def test_escape_cancels_a_reply_in_flight(kvchat_home: Path) -> None:
    app, seen = make_app(kvchat_home, max_tokens=3000)
    async with app.run_test(size=(100, 30), message_hook=seen.append) as pilot:
        await wait_for(seen, ModelReady, pilot)
        app.post_message(PromptSubmitted("Write the longest story you can."))
        await wait_for(seen, ReplyChunk, pilot)
        await pilot.press("escape")
        finished = await wait_for(seen, ReplyFinished, pilot)
        assert finished.done.finish_reason in ("cancelled", "stop")
        assert finished.done.completion_tokens < 3000
        assert not app.replying


async def test_a_message_longer_than_the_context_shows_a_note(kvchat_home: Path) -> None:
    config = KvchatConfig(model=ModelConfig(n_ctx=256),
                          sampling=SamplingConfig(temperature=0.0, max_tokens=8))
    app = KvchatApp(config, LocalEngine(config.model, config.sampling, config.kv),
                    Store(kvchat_home / "kvchat.db"))
    seen: list[Message] = []
    async with app.run_test(size=(100, 30), message_hook=seen.append) as pilot:
        await wait_for(seen, ModelReady, pilot)
        app.post_message(PromptSubmitted(" ".join(f"item{i}" for i in range(400))))
        finished = await wait_for(seen, ReplyFinished, pilot)
        await pilot.pause()
        notes = [w.render().plain for w in app.query(".notice")]
        assert len(notes) == 1 and notes[0].startswith("note: the message is")
        assert "tokens were cut" in notes[0]
        # The reply still came, and its stats line says the cache slid.
        assert finished.done.evictions >= 1
        assert "evictions" in app.query_one(ReplyMessage).query_one(".reply-stats").render().plain
