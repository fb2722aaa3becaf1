"""Conversations as message trees: the store's paths, siblings, switching and branches;
the session's edits and regenerations against the real default model (the engine
evaluates only past the branch point); and the same through ``kvchat``."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.backends.local import LocalEngine
from engine.config import KVCacheConfig, ModelConfig, SamplingConfig
from engine.errors import BranchError, ConversationNotFound, MessageNotFound
from engine.events import ContextMap, Done, Error, Event, PromptEvaluated, TurnStarted
from engine.session import ChatSession
from engine.store import Store
from tests.conftest import GREEDY, run_kvchat

SHORT = SamplingConfig(temperature=0.0, max_tokens=8, seed=0)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "kvchat.db") as s:
        yield s


def ids(rows: list) -> list[int]:
    return [r.id for r in rows]


def test_edits_and_replies_are_siblings_and_messages_is_the_active_path(store: Store) -> None:
    cid = store.create_conversation("chat", None)
    u1 = store.add_message(cid, "user", "one")
    a1 = store.add_message(cid, "assistant", "reply one")
    u2 = store.add_message(cid, "user", "two")
    a2 = store.add_message(cid, "assistant", "reply two")
    u2b = store.add_message(cid, "user", "two, edited", parent_id=a1)
    a2b = store.add_message(cid, "assistant", "reply to the edit")

    assert ids(store.messages(cid)) == [u1, a1, u2b, a2b]
    assert [m.parent_id for m in store.messages(cid)] == [None, u1, a1, u2b]
    assert ids(store.path_to(a2)) == [u1, a1, u2, a2]
    rows, index = store.siblings(u2b)
    assert (ids(rows), index) == ([u2, u2b], 1)
    rows, index = store.siblings(u1)
    assert (ids(rows), index) == ([u1], 0)
    assert ids(store.tree(cid)) == [u1, a1, u2, a2, u2b, a2b]
    conv = store.get_conversation(cid)
    assert (conv.message_count, conv.active_leaf_id) == (6, a2b)

    # A second first message: a root beside the first.
    u1b = store.add_message(cid, "user", "one, again", parent_id=None)
    assert ids(store.messages(cid)) == [u1b]
    assert ids(store.siblings(u1b)[0]) == [u1, u1b]


def test_set_active_comes_back_down_the_most_recently_visited_children(store: Store) -> None:
    cid = store.create_conversation("chat", None)
    u1 = store.add_message(cid, "user", "q")
    a1 = store.add_message(cid, "assistant", "first answer")
    u2 = store.add_message(cid, "user", "follow-up")
    a2 = store.add_message(cid, "assistant", "second answer")
    a1b = store.add_message(cid, "assistant", "another first answer", parent_id=u1)
    assert ids(store.messages(cid)) == [u1, a1b]

    # Switching to the older reply continues down what was under it.
    assert store.set_active(cid, a1) == a2
    assert ids(store.messages(cid)) == [u1, a1, u2, a2]
    # From the top, each fork takes the child shown last, not the newest one.
    time.sleep(0.01)
    assert store.set_active(cid, u1) == a2
    store.set_active(cid, a1b)
    time.sleep(0.01)
    assert store.set_active(cid, u1) == a1b
    # A new message goes under the active leaf.
    u3 = store.add_message(cid, "user", "on the other branch")
    assert ids(store.messages(cid)) == [u1, a1b, u3]

    other = store.create_conversation("other", None)
    with pytest.raises(MessageNotFound, match="not in conversation"):
        store.set_active(other, a1)
    with pytest.raises(MessageNotFound, match="no message with id 999"):
        store.set_active(cid, 999)
    with pytest.raises(MessageNotFound, match="not in conversation"):
        store.add_message(other, "user", "x", parent_id=a1)
    with pytest.raises(ConversationNotFound):
        store.messages(999)


def test_branch_from_copies_the_path_into_a_new_conversation(store: Store) -> None:
    cid = store.create_conversation("Rust lifetimes", "smollm2")
    u1 = store.add_message(cid, "user", "What is a lifetime?")
    a1 = store.add_message(cid, "assistant", "A scope.", stats={"completion_tokens": 3})
    store.add_message(cid, "user", "More?")
    store.add_message(cid, "assistant", "No.")

    new = store.branch_from(a1)

    conv = store.get_conversation(new)
    assert (conv.title, conv.model, conv.message_count) == (
        "Rust lifetimes (branch)", "smollm2", 2)
    copied = store.messages(new)
    assert [(m.role, m.content, m.stats) for m in copied] == [
        ("user", "What is a lifetime?", None), ("assistant", "A scope.", {"completion_tokens": 3})]
    assert copied[1].parent_id == copied[0].id and not set(ids(copied)) & {u1, a1}
    store.add_message(new, "user", "Only here")
    assert len(store.messages(cid)) == 4 and len(store.messages(new)) == 3
    with pytest.raises(MessageNotFound):
        store.branch_from(999)


def test_export_writes_the_path_or_the_whole_tree(store: Store) -> None:
    cid = store.create_conversation("Capitals", None)
    u1 = store.add_message(cid, "user", "Capital of France?")
    a1 = store.add_message(cid, "assistant", "Lyon.")
    a1b = store.add_message(cid, "assistant", "Paris.", parent_id=u1)

    md = store.export_markdown(cid)
    assert "Paris." in md and "Lyon." not in md
    js = store.export_json(cid)
    assert [m["id"] for m in js["messages"]] == [u1, a1b]

    full = store.export_json(cid, all_branches=True)
    assert [(m["id"], m["parent_id"]) for m in full["messages"]] == [
        (u1, None), (a1, u1), (a1b, u1)]
    assert full["active_path"] == [u1, a1b]
    tree_md = store.export_markdown(cid, all_branches=True)
    assert f"**Branch 1 of 2** after message {u1}\n" in tree_md
    assert f"**Branch 2 of 2** after message {u1}, shown\n" in tree_md
    assert tree_md.index("Lyon.") < tree_md.index("Paris.")
    assert f"## Assistant · message {a1b}" in tree_md


async def test_edit_and_regenerate_refuse_what_cannot_branch(store: Store) -> None:
    session = ChatSession(LocalEngine(ModelConfig(), GREEDY), store)  # never started
    empty = store.create_conversation("empty", None)
    cid = store.create_conversation("chat", None)
    store.add_message(cid, "user", "hi")
    reply = store.add_message(cid, "assistant", "hello")

    with pytest.raises(BranchError, match=f"conversation {empty} has no message to answer"):
        await _collect(session.regenerate(empty))
    with pytest.raises(BranchError, match=f"message {reply} is a reply"):
        await _collect(session.edit(reply, "new"))
    with pytest.raises(MessageNotFound, match="no message with id 4242"):
        await _collect(session.edit(4242, "new"))
    assert len(store.tree(cid)) == 2


async def _collect(events) -> list[Event]:
    return [event async for event in events]


def _one(events: list[Event], kind: type) -> Event:
    (found,) = [e for e in events if isinstance(e, kind)]
    return found


async def _two_turns(session: ChatSession) -> tuple[int, list[Event]]:
    first = await _collect(session.send("What is the capital of France?", None, SHORT))
    cid = first[0].conversation_id  # type: ignore[attr-defined]
    second = await _collect(session.send("And of Italy?", cid, SHORT))
    assert isinstance(second[-1], Done)
    return cid, second


async def test_regenerate_is_a_sibling_reply_from_the_cached_prompt(engine: LocalEngine,
                                                                    store: Store) -> None:
    session = ChatSession(engine, store, "Be brief.")
    cid, second = await _two_turns(session)
    old = store.messages(cid)

    events = await _collect(session.regenerate(cid, SHORT))

    started = _one(events, TurnStarted)
    assert started.user_message_id == old[2].id and started.reply_message_id != old[3].id
    prompt, before = _one(events, PromptEvaluated), _one(second, PromptEvaluated)
    # The same prompt as the turn just served: all of it is in the cache but the one
    # token the engine always evaluates to get the first reply token's logits.
    assert prompt.prompt_tokens == before.prompt_tokens
    assert prompt.reused_tokens == prompt.prompt_tokens - 1
    assert isinstance(events[-1], Done) and events[-1].text
    rows, index = store.siblings(started.reply_message_id)
    assert (ids(rows), index) == ([old[3].id, started.reply_message_id], 1)
    assert ids(store.messages(cid)) == [*ids(old[:3]), started.reply_message_id]
    assert store.messages(cid)[-1].status == "complete"
    assert store.path_to(old[3].id)[-1].content == old[3].content  # the old reply stays


async def test_edit_branches_and_evaluates_only_past_the_edit(engine: LocalEngine,
                                                              store: Store) -> None:
    session = ChatSession(engine, store, "Be brief.")
    cid, second = await _two_turns(session)
    old = store.messages(cid)

    events = await _collect(session.edit(old[2].id, "And of Spain?", SHORT))

    started = _one(events, TurnStarted)
    prompt, before = _one(events, PromptEvaluated), _one(second, PromptEvaluated)
    # Everything before the edited message (the first turn and its reply) came from
    # the cache, as it did for the message the edit replaces, and the edited message
    # up to where it departs ("And of "); only the rest is evaluated.
    assert before.reused_tokens and prompt.reused_tokens >= before.reused_tokens
    spans = [e for e in events if isinstance(e, ContextMap)][-1].spans
    _, start, end = [s for s in spans if s[0] == "user"][-1]  # the edited message
    assert start < prompt.reused_tokens < end
    assert prompt.evaluated_tokens == prompt.prompt_tokens - prompt.reused_tokens
    path = store.messages(cid)
    assert [m.content for m in path[:3]] == [old[0].content, old[1].content, "And of Spain?"]
    assert path[3].id == started.reply_message_id and path[3].status == "complete"
    rows, index = store.siblings(started.user_message_id)
    assert (ids(rows), index) == ([old[2].id, started.user_message_id], 1)
    # Switching back shows the old turn, and the model would see it again.
    store.set_active(cid, old[2].id)
    assert [m.content for m in session.history(cid)[1:]] == [m.content for m in old]


async def test_editing_the_first_message_starts_a_second_root(engine: LocalEngine,
                                                              store: Store) -> None:
    session = ChatSession(engine, store, "Be brief.")
    first = await _collect(session.send("What is the capital of France?", None, SHORT))
    cid = first[0].conversation_id  # type: ignore[attr-defined]
    (u1, _) = store.messages(cid)

    events = await _collect(session.edit(u1.id, "What is the capital of Germany?", SHORT))

    started = _one(events, TurnStarted)
    assert ids(store.siblings(started.user_message_id)[0]) == [u1.id, started.user_message_id]
    assert [m.role for m in store.messages(cid)] == ["user", "assistant"]
    prompt = _one(events, PromptEvaluated)
    # The system prompt and the start of the question were cached.
    assert prompt.reused_tokens and prompt.reused_tokens > 5


async def test_regenerating_a_failed_prompt_tries_it_again(engine: LocalEngine,
                                                          store: Store) -> None:
    session = ChatSession(engine, store, "Be brief.")
    cid = store.create_conversation("failed", None)
    user = store.add_message(cid, "user", "What is the capital of France?", status="error")
    store.add_message(cid, "assistant", "", status="error")
    assert [m.role for m in session.history(cid)] == ["system"]

    events = await _collect(session.regenerate(cid, SHORT))

    assert isinstance(events[-1], Done)
    assert store.message(user).status == "complete"
    assert [m.role for m in session.history(cid)] == ["system", "user", "assistant"]


async def test_a_failed_regeneration_leaves_the_answered_message_in(store: Store) -> None:
    eng = LocalEngine(ModelConfig(n_ctx=256), SHORT, KVCacheConfig(evict=False))
    await eng.start()
    try:
        session = ChatSession(eng, store)
        cid = store.create_conversation("long", None)
        user = store.add_message(cid, "user", "word " * 400)
        answer = store.add_message(cid, "assistant", "An answer from a larger context.")

        events = await _collect(session.regenerate(cid, SHORT))
    finally:
        await eng.close()

    final = events[-1]
    assert isinstance(final, Error) and final.code == "prompt_too_long", final
    failed = _one(events, TurnStarted).reply_message_id  # type: ignore[attr-defined]
    assert store.message(failed).status == "error"
    # The message was answered before: it stays in the context of that answer.
    assert store.message(user).status == "complete"
    store.set_active(cid, answer)
    assert [m.role for m in session.history(cid)] == ["user", "assistant"]


def test_cli_regenerate_edit_history_and_export_all_branches(kvchat_home: Path) -> None:
    opts = ("--max-tokens", "6", "--temp", "0")
    first = run_kvchat("ask", *opts, "What is the capital of France?", home=kvchat_home)
    assert first.returncode == 0, first.stderr
    again = run_kvchat("ask", "--conversation", "1", "--regenerate", *opts, home=kvchat_home)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip()

    shown = json.loads(run_kvchat("history", "1", "--json", home=kvchat_home).stdout)
    user, reply = shown["messages"]
    assert user["role"] == "user" and reply["sibling_index"] == 1
    assert len(reply["siblings"]) == 2
    text = run_kvchat("history", "1", home=kvchat_home).stdout
    assert f"{user['id']:>6}  user" in text and "[reply 2 of 2]" in text

    edited = run_kvchat("ask", "--conversation", "1", "--edit", str(user["id"]), *opts,
                        "What is the capital of Italy?", home=kvchat_home)
    assert edited.returncode == 0, edited.stderr
    full = json.loads(run_kvchat("export", "1", "--format", "json", "--all-branches",
                                 home=kvchat_home).stdout)
    roles = [(m["role"], m["parent_id"]) for m in full["messages"]]
    assert roles == [("user", None), ("assistant", user["id"]), ("assistant", user["id"]),
                     ("user", None), ("assistant", full["active_path"][0])]
    assert full["messages"][3]["content"] == "What is the capital of Italy?"
    md = run_kvchat("export", "1", "--all-branches", home=kvchat_home).stdout
    assert "**Branch 2 of 2** at the start, shown" in md and "**Branch 2 of 2** after" in md


@pytest.mark.parametrize("args, message", [
    (("--conversation", "1", "--edit", "99", "new"), "no message with id 99"),
    (("--conversation", "1", "--edit", "2", "new"), "message 2 is a reply"),
    (("--conversation", "2", "--edit", "1", "new"), "message 1 is not in conversation 2"),
    (("--conversation", "2", "--regenerate"), "conversation 2 has no message to answer"),
    (("--regenerate",), "--regenerate needs --conversation ID"),
    (("--conversation", "1", "--regenerate", "text"), "--regenerate takes no prompt"),
    (("--conversation", "1", "--edit", "1"), "--edit needs the new text"),
    (("--conversation", "1", "--edit", "1", "--regenerate", "x"), "cannot be used together"),
])
def test_cli_branch_mistakes_are_one_line(kvchat_home: Path, args: tuple[str, ...],
                                          message: str) -> None:
    with Store(kvchat_home / "kvchat.db") as store:
        cid = store.create_conversation("chat", None)
        store.add_message(cid, "user", "hi")
        store.add_message(cid, "assistant", "hello")
        store.create_conversation("empty", None)
    proc = run_kvchat("ask", *args, home=kvchat_home)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("kvchat: error: ") and message in line


def _turn_events(proc: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def _of(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e.get("type") == kind]


def test_cli_regenerate_and_edit_resume_from_the_saved_state(kvchat_home: Path) -> None:
    """Each ``kvchat ask`` is a new process: what the last one held comes back from the
    state file, and only what departs from it is evaluated."""
    opts = ("--max-tokens", "6", "--temp", "0", "--events", "jsonl")
    first = _turn_events(run_kvchat("ask", *opts, "My cat is called Miso and she is three.",
                                    home=kvchat_home))
    cid = _of(first, "turn_started")[0]["conversation_id"]
    second = _turn_events(run_kvchat("ask", "--conversation", str(cid), *opts,
                                     "What should I feed her?", home=kvchat_home))
    prompt = _of(second, "prompt")[0]
    assert prompt["restored_tokens"] > 0  # the first turn, from its file
    assert [n["tier"] for n in _of(second, "state_cache") if n["action"] == "restore"] \
        == ["disk"]

    regen = _turn_events(run_kvchat("ask", "--conversation", str(cid), "--regenerate", *opts,
                                    home=kvchat_home))
    prompt = _of(regen, "prompt")[0]
    assert [n["tier"] for n in _of(regen, "state_cache") if n["action"] == "restore"] \
        == ["disk"]
    # The same prompt as the last process's turn: every token of it but the last, which
    # is evaluated for its logits, comes from the saved state.
    assert prompt["prompt_tokens"] == _of(second, "prompt")[0]["prompt_tokens"]
    assert prompt["evaluated_tokens"] == 1
    assert prompt["restored_tokens"] == prompt["reused_tokens"] == prompt["prompt_tokens"] - 1

    edited_id = _of(second, "turn_started")[0]["user_message_id"]
    edit = _turn_events(run_kvchat("ask", "--conversation", str(cid), "--edit", str(edited_id),
                                   *opts, "How often should she see a vet?", home=kvchat_home))
    prompt = _of(edit, "prompt")[0]
    assert [n["tier"] for n in _of(edit, "state_cache") if n["action"] == "restore"] \
        == ["disk"]
    # Restored up to where the edit departs: inside the edited message, whose text
    # differs from its first word; everything after that point is evaluated.
    spans = _of(edit, "context")[-1]["spans"]
    _, start, end = [s for s in spans if s[0] == "user"][-1]  # the edited message
    assert start <= prompt["restored_tokens"] < end
    assert prompt["restored_tokens"] == prompt["reused_tokens"]
    assert prompt["evaluated_tokens"] == prompt["prompt_tokens"] - prompt["restored_tokens"]
