"""The conversation as a tree in the app: regenerate, edit, versions, branch, search, and
the context map; on the real default model and a real store, through the pilot."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import pytest
from textual.content import Content
from textual.message import Message
from textual.pilot import Pilot
from textual.widgets import OptionList

from engine.api import ChatMessage
from engine.backends.local import LocalEngine
from engine.backends.process.engine import ProcessEngine
from engine.config import ModelConfig, SamplingConfig
from engine.events import ContextMap, Done, Eviction, PromptEvaluated, PromptTruncated
from engine.store import Store
from tests.conftest import chat_request
from tests.test_snapshots import scripted_app
from tests.test_tui import events_of, make_app, wait_for
from tui.app import KvchatApp
from tui.context_view import MessageContext
from tui.messages import ModelReady, PromptSubmitted, ReplyFinished
from tui.screens.context_map import ContextMapScreen, bar_cells
from tui.screens.message_picker import MessagePicker
from tui.screens.search_screen import SearchResults, SearchScreen
from tui.widgets.chat_pane import ChatPane, ReplyMessage, UserMessage
from tui.widgets.prompt_input import PromptInput

SIZE = (120, 40)


async def send(app: KvchatApp, seen: list[Message], pilot: Pilot, text: str) -> ReplyFinished:
    after = len(seen)
    app.post_message(PromptSubmitted(text))
    finished = await wait_for(seen, ReplyFinished, pilot, after=after)
    await pilot.pause()
    return finished  # type: ignore[return-value]


def shown(app: KvchatApp) -> list[tuple[str, int | None]]:
    """The pane's messages in order: ``user`` or ``reply``, with their ids."""
    return [("user" if isinstance(w, UserMessage) else "reply", w.message_id)
            for w in app.shown_messages()]


async def test_regenerate_adds_a_version_and_switching_shows_the_first(
        kvchat_home: Path) -> None:
    app, seen = make_app(kvchat_home, max_tokens=6)
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        await wait_for(seen, ModelReady, pilot)
        await send(app, seen, pilot, "What is the capital of France?")
        first = app.query_one(ReplyMessage)
        first_id, first_text = first.message_id, first.text
        assert first_id is not None and first.mark == ""

        after = len(seen)
        await pilot.press("ctrl+g")
        await wait_for(seen, ReplyFinished, pilot, after=after)
        await pilot.pause()
        second = app.query_one(ReplyMessage)  # the only one: the first left the pane
        assert second.message_id not in (None, first_id)
        assert second.note.startswith("‹ 2/2 › · ")
        # The prompt was the cached one up to the first reply: only its last token read.
        prompt = events_of(seen[after:], PromptEvaluated)[0]
        assert prompt.reused_tokens > 0 and prompt.evaluated_tokens <= 2, prompt

        await pilot.press("alt+left")  # no message has the focus: the last reply's
        await pilot.pause()
        back = app.query_one(ReplyMessage)
        assert back.message_id == first_id and back.text == first_text
        assert back.note.startswith("‹ 1/2 › · ")
        # The next message continues the path shown.
        await send(app, seen, pilot, "And of Italy?")
        cid = app.conversation_id
        assert cid is not None
        assert [r.id for r in app.store.messages(cid)][1] == first_id
        assert [kind for kind, _ in shown(app)] == ["user", "reply", "user", "reply"]


async def test_edit_an_earlier_message_adds_a_version_and_its_reply(kvchat_home: Path) -> None:
    app, seen = make_app(kvchat_home, max_tokens=6)
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        await wait_for(seen, ModelReady, pilot)
        await send(app, seen, pilot, "What is the capital of France?")
        await send(app, seen, pilot, "And of Italy?")
        before = shown(app)
        old_user = before[2][1]
        assert old_user is not None
        # Alt+Up from the message box: the last reply, then the message it answers.
        await pilot.press("alt+up", "alt+up")
        assert isinstance(app.focused, UserMessage) and app.focused.message_id == old_user
        await pilot.press("enter")
        await pilot.pause()
        prompt = app.query_one(PromptInput)
        assert app.editing == old_user and prompt.text == "And of Italy?"
        assert app.focused is prompt and prompt.has_class("-editing")

        prompt.text = "And of Spain?"
        after = len(seen)
        await pilot.press("enter")
        await wait_for(seen, ReplyFinished, pilot, after=after)
        await pilot.pause()
        assert app.editing is None and not prompt.has_class("-editing")
        now = shown(app)
        assert now[:2] == before[:2] and len(now) == 4
        new_user = app.query(UserMessage).last()
        assert new_user.message_id not in (None, old_user)
        assert new_user.render().plain.startswith("And of Spain?")
        assert "‹ 2/2 ›" in new_user.render().plain
        siblings, index = app.store.siblings(new_user.message_id)
        assert [s.id for s in siblings] == [old_user, new_user.message_id] and index == 1
        reply = app.query(ReplyMessage).last()
        assert app.store.message(reply.message_id).parent_id == new_user.message_id
        assert reply.text and app.store.message(reply.message_id).content == reply.text
        # The path before the edited message was in the cache.
        assert events_of(seen[after:], PromptEvaluated)[0].reused_tokens > 0

        # Back to the first version, with its own reply below it.
        new_user.focus()
        await pilot.press("alt+left")
        await pilot.pause()
        assert shown(app) == before
        assert isinstance(app.focused, UserMessage) and app.focused.message_id == old_user
        assert "‹ 1/2 ›" in app.focused.render().plain


async def test_esc_leaves_an_edit_and_gives_the_draft_back(kvchat_home: Path) -> None:
    app, seen = make_app(kvchat_home, max_tokens=4)
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        await wait_for(seen, ModelReady, pilot)
        await send(app, seen, pilot, "Name a colour.")
        prompt = app.query_one(PromptInput)
        prompt.text = "half typed"
        app.query_one(UserMessage).focus()
        await pilot.press("enter")
        await pilot.pause()
        assert prompt.text == "Name a colour." and app.editing is not None
        await pilot.press("escape")
        await pilot.pause()
        assert prompt.text == "half typed" and app.editing is None


async def test_branch_from_a_message_opens_a_new_conversation(kvchat_home: Path) -> None:
    app, seen = make_app(kvchat_home, max_tokens=6)
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        await wait_for(seen, ModelReady, pilot)
        await send(app, seen, pilot, "What is the capital of France?")
        await send(app, seen, pilot, "And of Italy?")
        old = app.conversation_id
        assert old is not None
        first_reply = app.query(ReplyMessage).first()
        first_reply.focus()
        await pilot.press("ctrl+p")
        await pilot.press(*"Branch from here")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await pilot.pause(0.3)
        new = app.conversation_id
        assert new not in (None, old)
        assert app.store.get_conversation(new).title.endswith("(branch)")
        path = app.store.messages(new)
        assert [r.content for r in path] == [r.content for r in app.store.messages(old)[:2]]
        assert shown(app) == [("user", path[0].id), ("reply", path[1].id)]
        # The branch goes on by itself; the original keeps its four messages.
        await send(app, seen, pilot, "And of Spain?")
        assert len(app.store.messages(new)) == 4 and len(app.store.messages(old)) == 4


def store_for_search(store: Store) -> tuple[int, int]:
    """Two conversations; the message to find is on the branch not shown."""
    other = store.create_conversation("Birds", None)
    store.add_message(other, "user", "Which birds migrate?")
    cid = store.create_conversation("Animals", None)
    user = store.add_message(cid, "user", "Tell me about tall animals.")
    found = store.add_message(cid, "assistant", "The giraffe is the tallest animal alive.")
    store.add_message(cid, "assistant", "Elephants are large.", parent_id=user)
    return cid, found


async def test_search_finds_a_message_and_opens_it_on_its_branch(kvchat_home: Path) -> None:
    app, seen = make_app(kvchat_home, max_tokens=4)
    cid, found = store_for_search(app.store)
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        await wait_for(seen, ModelReady, pilot)
        # From the command palette (Ctrl+F opens the same screen: the next test).
        await pilot.press("ctrl+p", *"Search conversations")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await pilot.pause(0.3)
        assert isinstance(app.screen, SearchScreen)
        await pilot.press(*"giraf")
        results = await wait_for(seen, SearchResults, pilot)
        assert results.query == "giraf"  # type: ignore[attr-defined]
        screen = app.screen
        assert [h.message_id for h in screen.hits] == [found]
        label = screen.query_one("#search-hits", OptionList).get_option_at_index(0).prompt
        assert isinstance(label, Content)
        assert label.plain.startswith(f"#{cid} Animals · assistant, message {found}\n")
        marked = [label.plain[span.start:span.end] for span in label.spans
                  if "underline" in str(span.style)]
        assert marked == ["giraffe"]
        await pilot.press("enter")
        await pilot.pause(0.3)
        assert not isinstance(app.screen, SearchScreen)
        assert app.conversation_id == cid
        assert isinstance(app.focused, ReplyMessage) and app.focused.message_id == found
        assert "‹ 1/2 ›" in app.focused.note
        assert [r.id for r in app.store.messages(cid)][-1] == found


async def test_a_query_with_no_words_says_so(kvchat_home: Path) -> None:
    app, seen = make_app(kvchat_home, max_tokens=4)
    store_for_search(app.store)
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        await pilot.press("ctrl+f")
        await pilot.pause()
        assert isinstance(app.screen, SearchScreen)
        await pilot.press(*"--")
        results = await wait_for(seen, SearchResults, pilot)
        assert results.error and results.hits == []  # type: ignore[attr-defined]
        status = str(app.screen.query_one("#search-status").render())
        assert "nothing to search for" in status


@pytest.mark.parametrize("kind", [LocalEngine, ProcessEngine], ids=["thread", "process"])
async def test_the_context_event_maps_messages_and_evictions(
        kind: type[LocalEngine | ProcessEngine]) -> None:
    """Also through the engine process: the event crosses the pipe as it is."""
    eng = kind(ModelConfig(n_ctx=256), SamplingConfig(temperature=0.0, max_tokens=8))
    await eng.start()
    try:
        messages = [ChatMessage(role="system", content="Be brief."),
                    ChatMessage(role="user", content="Name a colour. " + "word " * 90)]
        events = [e async for e in eng.chat(chat_request(messages))]
        first = [e for e in events if isinstance(e, ContextMap)]
        done = events[-1]
        assert isinstance(done, Done) and isinstance(events[-2], ContextMap)
        assert len(first) == 1 and first[0].evicted == []
        roles = [role for role, _, _ in first[0].spans]
        assert roles == ["system", "user", "assistant"]
        # In order, apart (a turn's header lies between two spans), none empty.
        bounds = [(s, e) for _, s, e in first[0].spans]
        assert all(s < e for s, e in bounds)
        assert all(e <= s for (_, e), (s, _) in pairwise(bounds))
        # The reply's tokens follow the prompt (whose last tokens are the reply's header).
        _, user_start, user_end = first[0].spans[1]
        _, reply_start, reply_end = first[0].spans[-1]
        assert (reply_start, reply_end) == (done.prompt_tokens,
                                            done.prompt_tokens + done.completion_tokens)
        assert user_start < user_end < reply_start
        # Its last token may be sampled and not decoded (a reply cut at max_tokens).
        assert reply_end - 1 <= first[0].cached_end <= reply_end

        messages += [ChatMessage(role="assistant", content=done.text),
                     ChatMessage(role="user", content="And another. " + "more " * 120)]
        events = [e async for e in eng.chat(chat_request(messages))]
    finally:
        await eng.close()
    evictions = [e for e in events if isinstance(e, Eviction)]
    maps = [e for e in events if isinstance(e, ContextMap)]
    assert evictions and evictions[0].reason == "prompt"
    # One map after the eviction, one before done; the same spans, the reply growing.
    assert len(maps) == 1 + len(evictions) and isinstance(events[-2], ContextMap)
    last = maps[-1]
    assert [role for role, _, _ in last.spans] == ["system", "user", "assistant", "user",
                                                   "assistant"]
    assert last.spans[1] == first[0].spans[1]  # earlier spans kept from the last turn
    assert [(s, e, r) for s, e, r in last.evicted] == [
        (ev.kept_tokens + ev.evicted_total - ev.evicted_tokens,
         ev.kept_tokens + ev.evicted_total, ev.reason) for ev in evictions]
    # The first message is out: its span lies inside what was evicted.
    _, start, end = last.spans[1]
    assert last.evicted[0][0] <= start and end <= last.evicted[-1][1]


async def test_the_context_map_marks_evicted_messages(kvchat_home: Path) -> None:
    app, seen = make_app(kvchat_home, max_tokens=8, n_ctx=256)
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        await wait_for(seen, ModelReady, pilot)
        await send(app, seen, pilot, "Name a colour. " + "word " * 90)
        assert not app.query(".-evicted, .-part-evicted")
        after = len(seen)
        await send(app, seen, pilot, "And another. " + "more " * 120)
        assert events_of(seen[after:], Eviction)
        state = app.context_here()
        assert state is not None
        found = {r.message_id: r for r in state.rows}
        first_user = app.shown_messages()[0]
        assert found[first_user.message_id].state == "evicted"
        assert first_user.has_class("-evicted") and not first_user.has_class("-part-evicted")
        # The mark is drawn: a border at its left, absent on a message the model has.
        assert first_user.styles.border_left[0] == "outer"
        assert "no longer sees" in str(first_user.tooltip)
        assert "eviction" in str(first_user.tooltip)
        for widget in app.shown_messages():  # every mark says what the map says
            row = found[widget.message_id]
            assert widget.has_class("-evicted") == (row.state == "evicted")
            assert widget.has_class("-part-evicted") == (row.state == "partly evicted")
        last_user = app.query(UserMessage).last()
        assert not last_user.has_class("-evicted") and last_user.tooltip is None
        assert last_user.styles.border_left[0] in ("", "none")

        await pilot.press("f8")
        await pilot.pause(0.2)
        screen = app.screen
        assert isinstance(screen, ContextMapScreen)
        states = {r.message_id: r.state for r in screen.rows}
        assert states[first_user.message_id] == "evicted"
        assert states[last_user.message_id] == "in cache"
        assert "evicted in" in screen.summary
        # Enter on a row goes to that message.
        rows = screen.query_one("#context-rows", OptionList)
        rows.highlighted = [r.message_id for r in screen.rows].index(first_user.message_id)
        await pilot.press("enter")
        await pilot.pause(0.2)
        assert app.focused is first_user


async def test_a_message_cut_to_fit_is_marked_where_it_was_cut(kvchat_home: Path) -> None:
    app, seen = make_app(kvchat_home, max_tokens=8, n_ctx=256)
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        await wait_for(seen, ModelReady, pilot)
        await send(app, seen, pilot, "Summarize this. " + "lorem ipsum " * 200)
        cut = events_of(seen, PromptTruncated)
        assert cut
        user = app.query_one(UserMessage)
        assert user.has_class("-cut") and user.has_class("-part-evicted")
        assert f"its first {cut[0].cut_tokens} tokens were cut" in str(user.tooltip)
        # Said where it happened: right after the message that was cut, before its reply.
        pane = app.query_one(ChatPane)
        at = pane.children.index(user)
        notice, reply = pane.children[at + 1], pane.children[at + 2]
        assert notice.has_class("notice") and isinstance(reply, ReplyMessage)
        assert str(notice.render()).startswith("note: the message is")
        assert f"{cut[0].cut_tokens}" in str(notice.render())
        assert user.styles.border_left[0] == "outer"


async def test_the_map_shows_what_came_back_from_a_saved_state(kvchat_home: Path) -> None:
    app, seen = make_app(kvchat_home, max_tokens=6)
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        await wait_for(seen, ModelReady, pilot)
        await send(app, seen, pilot, "What is the capital of France?")
        first = app.conversation_id
        assert first is not None and app.context_here() is not None
        await pilot.press("ctrl+n")
        await send(app, seen, pilot, "Name a colour.")
        # The engine's cache holds the other conversation now: no map for this one.
        app.conversation_id = first
        await app.show_history(first)
        assert app.context_here() is None
        after = len(seen)
        await send(app, seen, pilot, "And of Italy?")
        prompt = events_of(seen[after:], PromptEvaluated)[0]
        assert prompt.restored_tokens > 0, prompt
        state = app.context_here()
        assert state is not None and "restored from a saved state" in state.summary
        earlier = [r for r in state.rows if r.message_id is not None][:2]
        # The first message whole; the reply as far as its saved tokens match the text
        # sent now (its last ones may tokenize differently).
        assert earlier[0].restored == earlier[0].tokens and earlier[1].restored > 0, earlier
        assert "restored from a saved state" in earlier[0].describe()


def context_rows() -> list[MessageContext]:
    return [
        MessageContext(None, "system", 0, 11, 11),
        MessageContext(3, "user", 11, 140, 0, {"prompt": 129},
                       preview="Summarize the following report in three bullet points"),
        MessageContext(4, "assistant", 140, 210, 30, {"prompt": 40},
                       preview="The report says revenue grew 12% while costs fell"),
        MessageContext(5, "user", 210, 236, 26, restored=20, preview="And the risks?"),
        MessageContext(6, "assistant", 236, 280, 44, preview="Supply and currency."),
    ]


def test_bar_cells_show_every_part_and_fill_the_width() -> None:
    rows = context_rows()
    assert bar_cells(rows[1]) == [0, 0, 16, 0]
    assert bar_cells(rows[2]) == [7, 0, 9, 0]
    assert bar_cells(rows[3]) == [4, 12, 0, 0]
    assert bar_cells(MessageContext(7, "user", 0, 1000, 999, {"prompt": 1})) == [15, 0, 1, 0]
    assert bar_cells(MessageContext(8, "assistant", 5, 5, 0)) == [0, 0, 0, 16]


def test_context_map_screen(snap_compare, tmp_path: Path) -> None:
    app = scripted_app(tmp_path, "kvchat-dark")
    summary = ("280 tokens in the conversation · 111 in the model's context of 4096 · "
               "8 kept at the start · 169 evicted in 2 spans · 20 restored from a saved state")

    async def run_before(pilot: Pilot) -> None:
        await pilot.pause()
        app.push_screen(ContextMapScreen(context_rows(), summary, "As of reply #6."))
        await pilot.pause(0.3)

    assert snap_compare(app, terminal_size=(120, 30), run_before=run_before)


async def test_edit_a_message_from_the_palette_lists_yours(tmp_path: Path) -> None:
    """No message has the focus: the palette's Edit a message asks which (a scripted
    engine: nothing is sent)."""
    app = scripted_app(tmp_path, "kvchat-dark")
    cid = app.store.create_conversation("two questions", None)
    for text in ("First question?", "An answer.", "Second question?", "Another."):
        app.store.add_message(cid, "user" if text.endswith("?") else "assistant", text)
    app.conversation_id = cid
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("ctrl+p", *"Edit a message")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await pilot.pause(0.3)
        picker = app.screen
        assert isinstance(picker, MessagePicker)
        assert [r.content for r in picker.rows] == ["First question?", "Second question?"]
        await pilot.press("up", "enter")  # the newest is highlighted first
        await pilot.pause(0.2)
        prompt = app.query_one(PromptInput)
        assert prompt.text == "First question?" and app.editing == picker.rows[0].id
