"""The app with several replies at once (``[model] parallel``): conversations streaming
together, each reply's own cancel, the refusal with one sequence, N answers side by
side, a reply waiting in the engine's queue, and each conversation's context map. The
real bundled model on a real store, driven through the pilot."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from textual.message import Message
from textual.pilot import Pilot
from textual.widgets import OptionList

from engine.backends.local import LocalEngine
from engine.backends.process.engine import ProcessEngine
from engine.config import KvchatConfig, ModelConfig, SamplingConfig
from engine.events import Eviction
from engine.store import Store
from tests.test_tui import PINNED, events_of, wait_for
from tui.app import KvchatApp
from tui.live import LiveReply
from tui.messages import AnswerEnded, ModelReady, ReplyChunk, ReplyFinished, ReplyStarted
from tui.screens.context_map import ContextMapScreen
from tui.screens.conversations import ConversationsScreen
from tui.widgets.answer_columns import AnswerColumn, AnswerColumns
from tui.widgets.chat_pane import ReplyMessage, UserMessage
from tui.widgets.prompt_input import PromptInput
from tui.widgets.status_line import StatusLine

SIZE = (120, 36)
LONG = 600
"""Tokens of a reply that must still stream while the test switches conversations (the
bundled model decodes a few hundred a second on two cores)."""
QUEUED = 1200
"""Tokens of each of the replies a third one waits behind: long enough that neither ends
before the third is sent."""


def parallel_app(home: Path, parallel: int, max_tokens: int,
                 process: bool = False, **model: Any) -> KvchatApp:
    """Every reply decodes exactly ``max_tokens`` (EOS ignored), so a reply is still
    streaming while the test switches conversations; ``process``: the engine in a
    process of its own, as ``kvchat`` runs it; ``model``: other fields of the model's
    config."""
    model = {"n_ctx": 4096} | model
    # Speculation off: each reply's pace must not hang on how repetitive its text
    # turns out, or a reply meant to stream on may end before the test looks at it.
    config = KvchatConfig(model=ModelConfig(parallel=parallel, **model),
                          sampling=SamplingConfig(temperature=0.0, max_tokens=max_tokens),
                          speculative={"mode": "off"}, ui={"stream_view": "markdown"})
    kind = ProcessEngine if process else LocalEngine
    engine = kind(config.model, config.sampling, config.kv, config.speculative)
    return KvchatApp(config, engine, Store(home / "kvchat.db"), route="chat", pinned=PINNED,
                     prefs_file=home / "ui-prefs.json", ignore_eos=True)


async def send(pilot: Pilot, text: str) -> None:
    prompt = pilot.app.query_one(PromptInput)
    prompt.focus()
    prompt.text = text
    await pilot.press("enter")


async def first_frame(seen: list[Message], pilot: Pilot,
                      other_than: LiveReply | None = None) -> ReplyChunk:
    """The first frame with text of a reply other than ``other_than``."""
    async def poll() -> ReplyChunk:
        while True:
            for m in seen:
                if isinstance(m, ReplyChunk) and m.text and m.live is not other_than:
                    return m
            await pilot.pause(0.02)
    return await asyncio.wait_for(poll(), 60)


async def finished(seen: list[Message], pilot: Pilot, count: int) -> list[ReplyFinished]:
    async def poll() -> list[ReplyFinished]:
        while len(done := [m for m in seen if isinstance(m, ReplyFinished)]) < count:
            await pilot.pause(0.05)
        return done
    return await asyncio.wait_for(poll(), 120)


async def settle(pilot: Pilot, check: Callable[[], bool], timeout: float = 20) -> None:
    """Until ``check()`` holds: screens, worker-loaded lists and focus take longer than
    any fixed pause on a loaded machine."""
    async def poll() -> None:
        while not check():
            await pilot.pause(0.02)
    await asyncio.wait_for(poll(), timeout)


async def test_two_conversations_stream_at_once_and_a_reply_shows_again_when_its_own_is(
        kvchat_home: Path) -> None:
    app, seen = parallel_app(kvchat_home, parallel=2, max_tokens=LONG), []
    notes: list[str] = []
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        app.notify = lambda message, **kw: notes.append(message)  # type: ignore[method-assign]
        await wait_for(seen, ModelReady, pilot)
        await send(pilot, "Tell me a long story about a lighthouse.")
        a = (await first_frame(seen, pilot)).live
        assert a is not None and a.widget is not None
        await pilot.press("ctrl+n")  # A streams on, unseen
        assert a.widget is None and not app.replying and not app.query(ReplyMessage)
        await send(pilot, "Name three colours.")
        b = (await first_frame(seen, pilot, a)).live
        assert b is not None and b is not a and b.widget is not None
        status = app.query_one(StatusLine)
        for _ in range(60):  # the figures follow at most twice a second
            if status.batch.startswith("batch 2 decoding"):
                break
            await pilot.pause(0.05)
        assert status.batch.startswith("batch 2 decoding") and "tok/s" in status.batch
        assert "│ this " in status.batch
        # Open A again from the conversations screen: marked generating, it shows its
        # text so far and streams on there.
        await pilot.press("ctrl+o")
        await settle(pilot, lambda: isinstance(app.screen, ConversationsScreen)
                     and app.screen.query_one(OptionList).option_count >= 2)
        screen = app.screen
        assert isinstance(screen, ConversationsScreen)
        options = screen.query_one(OptionList)
        labels = {options.get_option_at_index(i).id: str(options.get_option_at_index(i).prompt)
                  for i in range(options.option_count)}
        assert "generating" in labels[str(a.conversation_id)]
        options.highlighted = list(labels).index(str(a.conversation_id))
        await pilot.press("enter")
        await settle(pilot, lambda: app.conversation_id == a.conversation_id
                     and a.widget is not None)
        assert a.key in app.live, "A ended before it was shown again: make it longer"
        assert a.widget is not None and app.replying and b.widget is None
        assert a.widget.text == a.text and a.text
        done = await finished(seen, pilot, 2)
        ends = {m.live.key: m.done for m in done if m.live is not None}
        # Both complete, both stored whole; A's last frames were drawn where it is shown.
        assert {d.completion_tokens for d in ends.values()} == {LONG}
        assert a.widget is None and app.query(ReplyMessage).last().text == ends[a.key].text
        for live in (a, b):
            rows = app.store.messages(live.conversation_id)
            assert [r.role for r in rows] == ["user", "assistant"]
            assert rows[1].status == "complete" and rows[1].content == ends[live.key].text
        # B ended off screen: a notification names its conversation.
        assert any(n.startswith(f"#{b.conversation_id} ") for n in notes)
        assert not app.live and app.query_one(StatusLine).batch == ""


@pytest.mark.parametrize("process", [False, True], ids=["thread", "process"])
async def test_escape_cancels_the_shown_conversations_reply_only(kvchat_home: Path,
                                                                 process: bool) -> None:
    app, seen = parallel_app(kvchat_home, parallel=2, max_tokens=LONG, process=process), []
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        await wait_for(seen, ModelReady, pilot)
        await send(pilot, "Describe the sea at night.")
        a = (await first_frame(seen, pilot)).live
        await pilot.press("ctrl+n")
        await send(pilot, "Describe a forest in the morning.")
        b = (await first_frame(seen, pilot, a)).live
        assert a is not None and b is not None and b.widget is not None
        assert a.key in app.live, "A ended before B started: make it longer"
        await pilot.press("escape")
        done = await finished(seen, pilot, 2)
        ends = {m.live.key: m.done for m in done if m.live is not None}
        assert ends[b.key].finish_reason == "cancelled"
        assert ends[b.key].completion_tokens < LONG
        assert ends[a.key].finish_reason == "length" and ends[a.key].completion_tokens == LONG
        assert app.store.messages(a.conversation_id)[1].status == "complete"
        assert app.store.messages(b.conversation_id)[1].status == "cancelled"


async def test_with_one_sequence_a_send_elsewhere_waits_and_keeps_its_text(
        kvchat_home: Path) -> None:
    app, seen = parallel_app(kvchat_home, parallel=1, max_tokens=LONG), []
    notes: list[str] = []
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        app.notify = lambda message, **kw: notes.append(message)  # type: ignore[method-assign]
        await wait_for(seen, ModelReady, pilot)
        await send(pilot, "Tell me a long story about a lighthouse.")
        a = (await first_frame(seen, pilot)).live
        await pilot.press("ctrl+n")
        await send(pilot, "Name three colours.")
        # Refused in one line (A still streams), the text kept; nothing was sent.
        assert a is not None and app.query_one(PromptInput).text == "Name three colours."
        assert ("A reply in another conversation is in flight: kvchat --parallel N streams "
                "several.") in notes
        assert sum(isinstance(m, ReplyStarted) for m in seen) == 1
        assert not app.query(ReplyMessage)


async def test_three_answers_side_by_side_and_the_one_kept(kvchat_home: Path) -> None:
    app, seen = parallel_app(kvchat_home, parallel=3, max_tokens=12), []
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        await wait_for(seen, ModelReady, pilot)
        app.query_one(PromptInput).text = "Name a fruit."
        await pilot.press("ctrl+t")

        async def ended() -> None:
            while sum(isinstance(m, AnswerEnded) for m in seen) < 3:
                await pilot.pause(0.05)
        await asyncio.wait_for(ended(), 60)
        await settle(pilot, lambda: app.query_one(AnswerColumns).picking
                     and app.focused is app.query_one(AnswerColumns))
        columns = app.query_one(AnswerColumns)
        shown = list(columns.query_children(AnswerColumn))
        assert len(shown) == 3 and columns.picking and app.focused is columns
        # Side by side: three columns on one row, each with its text and its own note.
        assert len({c.region.y for c in shown}) == 1 and len({c.region.x for c in shown}) == 3
        ends = {m.k: m.end for m in seen if isinstance(m, AnswerEnded)}
        for k, column in enumerate(shown):
            assert column.text == ends[k].text and column.text  # type: ignore[union-attr]
            note = str(column.query_one(".answer-note").render())
            assert "12 tokens" in note and "tok/s" in note
        ids = list(columns.reply_ids)
        assert len(ids) == 3
        await pilot.press("2")
        await settle(pilot, lambda: not app.query(AnswerColumns)
                     and app.focused is app.query_one(PromptInput))
        rows = app.store.messages(app.conversation_id)
        assert [r.role for r in rows] == ["user", "assistant"] and rows[1].id == ids[1]
        siblings, index = app.store.siblings(ids[1])
        assert [s.id for s in siblings] == ids and index == 1
        assert all(s.status == "complete" for s in siblings)
        reply = app.query_one(ReplyMessage)
        assert reply.message_id == ids[1] and reply.mark == "‹ 2/3 ›"
        assert not app.query(AnswerColumns)


async def test_a_reply_past_the_batch_waits_queued_then_streams(kvchat_home: Path) -> None:
    """Two sequences, three conversations asking at once: the third says where it
    waits, on its reply and the status line, and streams once one of the others ends."""
    app, seen = parallel_app(kvchat_home, parallel=2, max_tokens=QUEUED), []
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        await wait_for(seen, ModelReady, pilot)
        await send(pilot, "Tell me a long story about a lighthouse.")
        a = (await first_frame(seen, pilot)).live
        await pilot.press("ctrl+n")
        await send(pilot, "Describe a forest in the morning.")
        await pilot.press("ctrl+n")
        await send(pilot, "Name three colours.")
        await settle(pilot, lambda: any(live.queued for live in app.live.values()))
        c = app.shown_live()
        assert a is not None and c is not None and c is not a
        b = next(live for live in app.live.values() if live not in (a, c))
        assert a.key in app.live and not a.queued and not b.queued, \
            "A or B ended first: make them longer"
        assert c.queued == 1 and not c.text and c.widget is not None
        assert c.widget.note == "queued, position 1"
        status = app.query_one(StatusLine)
        assert status.state == "queued, position 1…"
        await settle(pilot, lambda: status.batch.startswith("batch 2 decoding, 1 queued"))
        # One of the others ends; then the third streams, in its place and on the line.
        await settle(pilot, lambda: c.decoding, timeout=120)
        ended = next(i for i, m in enumerate(seen) if isinstance(m, ReplyFinished))
        began = next(i for i, m in enumerate(seen)
                     if isinstance(m, ReplyChunk) and m.live is c and m.text)
        assert ended < began and seen[ended].live in (a, b)  # type: ignore[attr-defined]
        assert c.queued is None and c.widget is not None
        assert not c.widget.note.startswith("queued") and status.state == "generating…"
        done = await finished(seen, pilot, 3)
        ends = {m.live.key: m.done for m in done if m.live is not None}
        assert ends[c.key].finish_reason == "length"
        assert ends[c.key].completion_tokens == QUEUED
        assert c.widget is None and app.query(ReplyMessage).last().text == ends[c.key].text
        assert app.store.messages(c.conversation_id)[1].status == "complete"
        assert not app.live and status.batch == ""


async def test_f8_shows_each_conversations_map_in_parallel_mode(kvchat_home: Path) -> None:
    """Two sequences of 256 cells: a conversation whose history is cut to fit has its
    first message marked and mapped as evicted, and keeps its map while another
    conversation replies on the other sequence."""
    app, seen = parallel_app(kvchat_home, parallel=2, max_tokens=8, n_ctx=512,
                             kv_layout="split"), []
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        await wait_for(seen, ModelReady, pilot)
        await send(pilot, "Name a colour. " + "word " * 90)
        await finished(seen, pilot, 1)
        await send(pilot, "And another. " + "more " * 190)
        await finished(seen, pilot, 2)
        assert [e.reason for e in events_of(seen, Eviction)][:1] == ["prompt"]
        first = app.conversation_id
        users = list(app.query(UserMessage))
        await settle(pilot, lambda: users[0].has_class("-evicted"))
        assert not users[1].has_class("-evicted") and users[1].tooltip is None
        assert "no longer sees" in str(users[0].tooltip)

        async def context_map() -> ContextMapScreen:
            await pilot.press("f8")
            await settle(pilot, lambda: isinstance(app.screen, ContextMapScreen))
            screen = app.screen
            assert isinstance(screen, ContextMapScreen)
            return screen

        screen = await context_map()
        states = {r.message_id: r.state for r in screen.rows}
        assert states[users[0].message_id] == "evicted"
        assert states[users[1].message_id] == "in cache"
        assert "evicted in" in screen.summary
        await pilot.press("escape")
        await settle(pilot, lambda: not isinstance(app.screen, ContextMapScreen))
        # Another conversation replies on the other sequence: this one keeps its map.
        await pilot.press("ctrl+n")
        await send(pilot, "Name three colours.")
        await finished(seen, pilot, 3)
        assert app.context_here() is not None and app.conversation_id != first
        assert first is not None
        app.conversation_id = first
        await app.show_history(first)
        users = list(app.query(UserMessage))
        await settle(pilot, lambda: users[0].has_class("-evicted"))
        screen = await context_map()
        assert {r.message_id: r.state for r in screen.rows} == states
