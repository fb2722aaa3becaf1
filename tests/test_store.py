"""The conversation store, against real SQLite files."""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import platformdirs
import pytest

from engine.errors import ConversationNotFound, StoreError
from engine.history.tree import TREE_SCHEMA
from engine.store import MIGRATIONS, Store, default_data_dir, title_from_prompt

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "kvchat.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    with Store(db_path) as s:
        yield s


def test_open_creates_file_with_wal_and_schema(db_path: Path, store: Store) -> None:
    assert db_path.is_file()
    raw = sqlite3.connect(db_path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        raw.close()
    assert {"conversations", "messages"} <= tables


def test_reopen_keeps_data_and_does_not_remigrate(db_path: Path) -> None:
    with Store(db_path) as s:
        cid = s.create_conversation("kept", "gemma")
    with Store(db_path) as s:
        assert s.get_conversation(cid).title == "kept"
        assert len(s.list_conversations()) == 1


def test_create_get_and_list_order(store: Store) -> None:
    a = store.create_conversation("first", "gemma")
    time.sleep(0.01)
    b = store.create_conversation("second", None)
    time.sleep(0.01)
    c = store.create_conversation("third", "qwen")

    row = store.get_conversation(b)
    assert (row.id, row.title, row.model, row.message_count) == (b, "second", None, 0)
    assert row.created_at == row.updated_at

    assert [r.id for r in store.list_conversations()] == [c, b, a]
    assert [r.id for r in store.list_conversations(limit=2)] == [c, b]

    # A new message makes its conversation the most recent one.
    time.sleep(0.01)
    store.add_message(a, "user", "hi")
    listed = store.list_conversations()
    assert [r.id for r in listed] == [a, c, b]
    assert listed[0].message_count == 1


def test_missing_conversation_raises(store: Store) -> None:
    with pytest.raises(ConversationNotFound):
        store.get_conversation(999)
    with pytest.raises(ConversationNotFound):
        store.add_message(999, "user", "hello")
    with pytest.raises(ConversationNotFound):
        store.rename_conversation(999, "x")
    with pytest.raises(ConversationNotFound):
        store.delete_conversation(999)
    with pytest.raises(ConversationNotFound):
        store.messages(999)


def test_messages_round_trip_with_stats(store: Store) -> None:
    cid = store.create_conversation("chat", "gemma")
    stats = {"tokens": 12, "tok_per_s": 41.5, "nested": {"ok": True}, "list": [1, 2]}
    m1 = store.add_message(cid, "system", "be brief")
    m2 = store.add_message(cid, "user", "héllo\nwörld 👋")
    m3 = store.add_message(cid, "assistant", "hi", stats=stats)

    msgs = store.messages(cid)
    assert [m.id for m in msgs] == [m1, m2, m3]
    assert [m.role for m in msgs] == ["system", "user", "assistant"]
    assert msgs[1].content == "héllo\nwörld 👋"
    assert msgs[0].stats is None
    assert msgs[2].stats == stats
    assert all(m.status == "complete" and m.conversation_id == cid for m in msgs)
    assert store.get_conversation(cid).message_count == 3


def test_bad_role_or_status_rejected(store: Store) -> None:
    cid = store.create_conversation("chat", None)
    with pytest.raises(ValueError, match="role"):
        store.add_message(cid, "robot", "x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="status"):
        store.add_message(cid, "user", "x", status="done")  # type: ignore[arg-type]
    assert store.messages(cid) == []


def test_update_message_streaming_progress(store: Store) -> None:
    cid = store.create_conversation("chat", None)
    mid = store.add_message(cid, "assistant", "", status="streaming")
    before = store.messages(cid)[0]

    time.sleep(0.01)
    store.update_message(mid, content="Hel")
    partial = store.messages(cid)[0]
    assert (partial.content, partial.status, partial.stats) == ("Hel", "streaming", None)
    assert partial.updated_at > before.updated_at
    assert partial.created_at == before.created_at

    store.update_message(mid, content="Hello!", status="complete", stats={"tokens": 3})
    done = store.messages(cid)[0]
    assert (done.content, done.status, done.stats) == ("Hello!", "complete", {"tokens": 3})

    # Fields left out stay as they were.
    store.update_message(mid, status="error")
    again = store.messages(cid)[0]
    assert (again.content, again.status, again.stats) == ("Hello!", "error", {"tokens": 3})

    with pytest.raises(StoreError):
        store.update_message(12345, content="nowhere")


def test_delete_cascades_to_messages(db_path: Path, store: Store) -> None:
    keep = store.create_conversation("keep", None)
    drop = store.create_conversation("drop", None)
    store.add_message(keep, "user", "stay")
    store.add_message(drop, "user", "go")
    store.add_message(drop, "assistant", "gone")

    store.delete_conversation(drop)

    assert [r.id for r in store.list_conversations()] == [keep]
    with pytest.raises(ConversationNotFound):
        store.get_conversation(drop)
    raw = sqlite3.connect(db_path)
    try:
        orphans = raw.execute("SELECT COUNT(*) FROM messages WHERE conversation_id = ?",
                              (drop,)).fetchone()[0]
    finally:
        raw.close()
    assert orphans == 0
    assert [m.content for m in store.messages(keep)] == ["stay"]


def test_rename(store: Store) -> None:
    cid = store.create_conversation("old", "gemma")
    store.rename_conversation(cid, "new name")
    row = store.get_conversation(cid)
    assert row.title == "new name"
    assert row.model == "gemma"


def test_recover_interrupted(db_path: Path) -> None:
    # Streamed by a process that has ended since: only replies whose process is gone
    # are marked (tests/test_hostile_data.py has a live owner).
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from engine.store import Store\n"
        "with Store(Path(sys.argv[1])) as s:\n"
        "    cid = s.create_conversation('chat', None)\n"
        "    s.add_message(cid, 'user', 'q')\n"
        "    s.add_message(cid, 'assistant', 'partial answ', status='streaming')\n"
        "    s.add_message(cid, 'assistant', 'stopped', status='cancelled')\n"
        "    other = s.create_conversation('other', None)\n"
        "    s.add_message(other, 'assistant', 'also partial', status='streaming')\n"
    )
    subprocess.run([sys.executable, "-c", script, str(db_path)], cwd=ROOT, check=True,
                   timeout=60)
    cid, other = 1, 2

    with Store(db_path) as s:
        assert s.recover_interrupted() == 2
        statuses = [m.status for m in s.messages(cid)]
        assert statuses == ["complete", "interrupted", "cancelled"]
        assert s.messages(other)[0].status == "interrupted"
        assert s.messages(cid)[1].content == "partial answ"
        assert s.recover_interrupted() == 0


def test_export_markdown(store: Store) -> None:
    cid = store.create_conversation("Rust lifetimes", "gemma-3-270m")
    store.add_message(cid, "user", "What is a lifetime?")
    store.add_message(cid, "assistant", "A scope for a borrow.")
    store.add_message(cid, "user", "More?")
    store.add_message(cid, "assistant", "It is half", status="interrupted")

    md = store.export_markdown(cid)

    assert md.startswith("# Rust lifetimes\n")
    assert md.count("## User") == 2
    assert md.count("## Assistant") == 2
    assert md.index("What is a lifetime?") < md.index("A scope for a borrow.") < md.index("More?")
    assert "It is half\n\n_(interrupted)_" in md
    assert md.count("_(") == 1  # complete messages carry no marker
    assert md.endswith("\n")


def test_export_json(store: Store) -> None:
    cid = store.create_conversation("json chat", "gemma")
    store.add_message(cid, "user", "ping")
    store.add_message(cid, "assistant", "pong", status="error", stats={"tokens": 1})

    data = store.export_json(cid)

    # Must survive a JSON round trip unchanged.
    assert json.loads(json.dumps(data)) == data
    assert data["id"] == cid
    assert data["title"] == "json chat"
    assert data["model"] == "gemma"
    assert data["message_count"] == 2
    assert [(m["role"], m["content"], m["status"]) for m in data["messages"]] == [
        ("user", "ping", "complete"), ("assistant", "pong", "error")]
    assert data["messages"][1]["stats"] == {"tokens": 1}
    assert isinstance(data["created_at"], float)


def test_non_sqlite_file_raises_and_is_untouched(tmp_path: Path) -> None:
    path = tmp_path / "kvchat.db"
    path.write_text("hello")

    with pytest.raises(StoreError) as info:
        Store(path)

    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)
    assert path.read_text() == "hello"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kvchat.db"]


def test_corrupt_sqlite_file_raises_and_is_untouched(tmp_path: Path) -> None:
    # Right magic, garbage after it: only SQLite itself can tell.
    path = tmp_path / "kvchat.db"
    payload = b"SQLite format 3\x00" + b"\xff" * 200
    path.write_bytes(payload)

    with pytest.raises(StoreError, match=r"kvchat\.db"):
        Store(path)

    assert path.read_bytes() == payload


def test_newer_schema_refused(db_path: Path) -> None:
    with Store(db_path):
        pass
    raw = sqlite3.connect(db_path)
    raw.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 5}")
    raw.close()

    with pytest.raises(StoreError, match="newer"):
        Store(db_path)


def test_closed_store_raises_store_error(db_path: Path) -> None:
    s = Store(db_path)
    s.close()
    with pytest.raises(StoreError):
        s.list_conversations()
    with pytest.raises(StoreError):
        s.create_conversation("x", None)


def test_default_data_dir_honours_kvchat_home(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "custom-home"
    monkeypatch.setenv("KVCHAT_HOME", str(home))
    assert default_data_dir() == home
    assert not home.exists()  # created only when the store opens

    with Store.open_default() as s:
        s.create_conversation("here", None)
    assert (home / "kvchat.db").is_file()


def test_default_data_dir_expands_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVCHAT_HOME", "~/kv-somewhere")
    assert default_data_dir() == Path.home() / "kv-somewhere"


def test_default_data_dir_without_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KVCHAT_HOME", raising=False)
    assert default_data_dir() == Path(platformdirs.user_data_dir("kvchat"))


@pytest.mark.parametrize(("text", "expected"), [
    ("Hello   world\nsecond line", "Hello world"),
    ("\n\n   \n  padded\t title  ", "padded title"),
    ("", "Untitled"),
    ("  \n\t\n", "Untitled"),
    ("x" * 60, "x" * 60),
])
def test_title_from_prompt(text: str, expected: str) -> None:
    assert title_from_prompt(text) == expected


def test_title_from_prompt_truncates() -> None:
    title = title_from_prompt("word " * 40)
    assert len(title) <= 60
    assert title.endswith("…")
    assert title.startswith("word word")


def test_sigkill_loses_nothing_written(tmp_path: Path) -> None:
    path = tmp_path / "crash" / "kvchat.db"
    script = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from engine.store import Store\n"
        "s = Store(Path(sys.argv[1]))\n"
        "cid = s.create_conversation('before the crash', 'gemma')\n"
        "s.add_message(cid, 'user', 'are you there?')\n"
        "mid = s.add_message(cid, 'assistant', '', status='streaming')\n"
        "s.update_message(mid, content='I was in the middle of')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr

    with Store(path) as s:
        [conv] = s.list_conversations()
        assert conv.title == "before the crash"
        msgs = s.messages(conv.id)
        assert [(m.role, m.content) for m in msgs] == [
            ("user", "are you there?"), ("assistant", "I was in the middle of")]
        assert msgs[1].status == "streaming"
        assert s.recover_interrupted() == 1
        assert s.messages(conv.id)[1].status == "interrupted"


def test_recent_prompts_span_conversations_oldest_first(db_path: Path) -> None:
    """The message box's history outlives the process: what the user sent, in every
    conversation, in order, replies left out, a message sent twice in a row once."""
    with Store(db_path) as s:
        a = s.create_conversation("a", None)
        b = s.create_conversation("b", None)
        s.add_message(a, "user", "first")
        s.add_message(a, "assistant", "a reply")
        s.add_message(b, "user", "second")
        s.add_message(b, "user", "second")
        s.add_message(a, "user", "third\nwith two lines")
    with Store(db_path) as s:
        assert s.recent_prompts() == ["first", "second", "third\nwith two lines"]
        assert s.recent_prompts(limit=2) == ["second", "third\nwith two lines"]


def _raw_messages(path: Path) -> dict[int, list[tuple[int, str, str, str]]]:
    """Each conversation's messages as the old schema ordered them: by id."""
    raw = sqlite3.connect(path)
    try:
        rows = raw.execute("SELECT conversation_id, id, role, content, status FROM messages"
                           " ORDER BY id").fetchall()
        convs = [cid for (cid,) in raw.execute("SELECT id FROM conversations")]
    finally:
        raw.close()
    found: dict[int, list[tuple[int, str, str, str]]] = {cid: [] for cid in convs}
    for cid, *rest in rows:
        found[cid].append(tuple(rest))  # type: ignore[arg-type]
    return found


def test_a_store_written_before_message_trees_opens_as_single_paths(tmp_path: Path) -> None:
    # Written by kvchat's store at schema version 2 (before attempts recorded a cut-off,
    # before message trees and search): see tests/data/store-v2.db's rows below.
    path = tmp_path / "kvchat.db"
    shutil.copyfile(ROOT / "tests" / "data" / "store-v2.db", path)
    before = _raw_messages(path)
    assert [len(rows) for rows in before.values()] == [4, 6, 0]

    with Store(path) as s:
        for cid, old in before.items():
            path_rows = s.messages(cid)
            assert [(m.id, m.role, m.content, m.status) for m in path_rows] == old
            assert [m.parent_id for m in path_rows] == [None, *[m.id for m in path_rows]][
                :len(path_rows)]
            conv = s.get_conversation(cid)
            assert conv.active_leaf_id == (old[-1][0] if old else None)
            assert conv.message_count == len(old)
        (rust, capitals, empty) = before
        assert s.messages(capitals)[1].stats == {"attempts": 1}
        assert [a.ok for a in s.attempts(s.messages(capitals)[1].id)] == [True]
        # Indexed by the migration.
        assert [h.message_id for h in s.search("borrow checker")] == [before[rust][2][0]]
        assert [h.conversation_id for h in s.search("lifetimes")] == [rust]
        # A new message continues the path; a regenerated reply is a sibling.
        new = s.add_message(rust, "user", "Thanks")
        assert s.messages(rust)[-1].parent_id == before[rust][-1][0]
        assert s.message(new).parent_id == before[rust][-1][0]
        again = s.add_message(capitals, "assistant", "Roma.", parent_id=before[capitals][4][0])
        assert [m.id for m in s.siblings(again)[0]] == [before[capitals][5][0], again]
        assert s.messages(empty) == []
        s.add_message(empty, "user", "first")
        assert [m.content for m in s.messages(empty)] == ["first"]


def test_tree_migration_keeps_interleaved_conversations_apart(tmp_path: Path) -> None:
    """Messages of two conversations written in turns: each gets its own chain."""
    path = tmp_path / "kvchat.db"
    version = MIGRATIONS.index(TREE_SCHEMA)
    raw = sqlite3.connect(path)
    for script in MIGRATIONS[:version]:
        raw.executescript(script)
    raw.execute(f"PRAGMA user_version = {version}")
    raw.execute("INSERT INTO conversations VALUES (1, 'a', NULL, 1, 1), (2, 'b', NULL, 1, 1)")
    for n in range(6):
        raw.execute("INSERT INTO messages (conversation_id, role, content, status, created_at,"
                    " updated_at) VALUES (?, ?, ?, 'complete', ?, ?)",
                    (1 + n % 2, "user" if n % 4 < 2 else "assistant", f"m{n}", n, n))
    raw.commit()
    raw.close()

    with Store(path) as s:
        assert [(m.content, m.parent_id) for m in s.messages(1)] == [
            ("m0", None), ("m2", 1), ("m4", 3)]
        assert [(m.content, m.parent_id) for m in s.messages(2)] == [
            ("m1", None), ("m3", 2), ("m5", 4)]
        assert [h.message_id for h in s.search("m3")] == [4]
