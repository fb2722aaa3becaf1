"""The store and every file kvchat writes, against careless and hostile use.

An export aimed at the store itself, or at a file that exists; a write interrupted
half-way; a second kvchat opening the store while another streams a reply into it; a
fresh home's permissions; a schema pattern that takes a backtracking engine exponential
time. In every case nothing stored is lost. Replies come from a real HTTP server on
127.0.0.1 (tests/test_hostile_terminal.py's); no model is loaded here.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.files.atomic import atomic_write, private_dir
from engine.history.owner import OWNER_SCHEMA, STALE_S, owner_alive, process_start, this_process
from engine.store import MIGRATIONS, Store
from engine.structured.checks import check_json, schema_problem
from engine.structured.patterns import compiled
from tests.conftest import kvchat_exe, run_kvchat
from tests.test_hostile_terminal import HostileTextServer
from tui.prefs import UiPrefs, save_prefs
from tui.screens.conversations import export_conversation

ROOT = Path(__file__).resolve().parent.parent


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def rows(db: Path) -> list[tuple[str, str, str]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT role, content, status FROM messages ORDER BY id").fetchall()
    finally:
        conn.close()


@pytest.fixture
def chat(kvchat_home: Path) -> Path:
    """A store holding one conversation; its path."""
    db = kvchat_home / "kvchat.db"
    with Store(db) as store:
        cid = store.create_conversation("kept", None)
        store.add_message(cid, "user", "a question")
        store.add_message(cid, "assistant", "an answer")
    return db


# -- exports -----------------------------------------------------------------------------


def test_export_never_writes_over_the_store(chat: Path, kvchat_home: Path) -> None:
    before = rows(chat)
    (kvchat_home / "link.db").symlink_to(chat)
    os.link(chat, kvchat_home / "hard.db")
    for target in (chat, Path(f"{chat}-wal"), Path(f"{chat}-shm"), kvchat_home / "link.db",
                   kvchat_home / "hard.db"):
        for extra in ((), ("--force",)):
            proc = run_kvchat("export", "1", "-o", str(target), *extra, home=kvchat_home)
            assert proc.returncode == 2, proc.stderr
            assert proc.stderr.splitlines() == [
                f"kvchat: error: {target} is the conversation store itself: choose another "
                "file"]
    assert rows(chat) == before
    with Store(chat) as store:
        assert store.get_conversation(1).title == "kept"


def test_export_over_an_existing_file_needs_force(chat: Path, kvchat_home: Path,
                                                  tmp_path: Path) -> None:
    out = tmp_path / "notes.md"
    out.write_text("my own notes\n")
    out.chmod(0o640)
    proc = run_kvchat("export", "1", "-o", str(out), home=kvchat_home)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"kvchat: error: {out} exists: --force replaces it"]
    assert out.read_text() == "my own notes\n"
    forced = run_kvchat("export", "1", "-o", str(out), "--force", home=kvchat_home)
    assert forced.returncode == 0, forced.stderr
    assert "an answer" in out.read_text() and mode(out) == 0o640  # its mode kept
    fresh = tmp_path / "new.json"
    assert run_kvchat("export", "1", "--format", "json", "-o", str(fresh),
                      home=kvchat_home).returncode == 0
    assert mode(fresh) == 0o600 and json.loads(fresh.read_text())["title"] == "kept"
    assert mode(tmp_path) == stat.S_IMODE(tmp_path.stat().st_mode)  # the user's dir as it was
    assert run_kvchat("export", "1", "-o", str(tmp_path), home=kvchat_home).returncode == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kvchat-home", "new.json",
                                                          "notes.md"]  # no temporary left


class Interrupted(Exception):
    pass


def parts_then_fail() -> Iterator[bytes]:
    yield b"first half, "
    raise Interrupted


def test_an_interrupted_write_leaves_the_old_file_and_no_partial_one(tmp_path: Path) -> None:
    target = tmp_path / "out.md"
    target.write_text("the old export\n")
    with pytest.raises(Interrupted):
        atomic_write(target, parts_then_fail())
    assert target.read_text() == "the old export\n"
    new = tmp_path / "never.md"
    with pytest.raises(Interrupted):
        atomic_write(new, parts_then_fail())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.md"]
    atomic_write(new, "whole\n")
    assert new.read_text() == "whole\n" and mode(new) == 0o600


def test_a_killed_writer_leaves_the_old_file(tmp_path: Path) -> None:
    """SIGKILL between writing and renaming: the target holds the old text whole."""
    target = tmp_path / "prefs.json"
    target.write_text('{"theme": "old"}\n')
    script = ("import os, signal, sys\n"
              "from pathlib import Path\n"
              "from engine.files.atomic import atomic_write\n"
              "def parts():\n"
              "    yield b'{\"theme\": '\n"
              "    os.kill(os.getpid(), signal.SIGKILL)\n"
              "atomic_write(Path(sys.argv[1]), parts())\n")
    proc = subprocess.run([sys.executable, "-c", script, str(target)], cwd=ROOT, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert target.read_text() == '{"theme": "old"}\n'


# -- permissions -------------------------------------------------------------------------


def test_a_fresh_home_is_private(tmp_path: Path) -> None:
    """Under a permissive umask too: the data dir 0700, the store and its WAL files,
    UI preferences, exports and saved states 0600."""
    home = tmp_path / "fresh" / "kvchat"
    script = ("import json, os, sys\n"
              "os.umask(0)\n"
              "from pathlib import Path\n"
              "from engine.store import Store\n"
              "from engine.cache.state_file import write_parts\n"
              "from engine.files.atomic import private_dir\n"
              "from tui.prefs import UiPrefs, save_prefs\n"
              "from tui.screens.conversations import export_conversation\n"
              "home = Path(sys.argv[1])\n"
              "with Store(home / 'kvchat.db') as s:\n"
              "    cid = s.create_conversation('t', None)\n"
              "    s.add_message(cid, 'user', 'private words')\n"
              "    print(json.dumps({p.name: oct(p.stat().st_mode & 0o777)\n"
              "                      for p in home.iterdir()}))\n"
              "    save_prefs(UiPrefs(theme='x'), home / 'ui-prefs.json')\n"
              "    export_conversation(s, cid, 'md', home / 'exports')\n"
              "write_parts(private_dir(home / 'state-cache') / 'a.kvstate', [b'state'])\n")
    proc = subprocess.run([sys.executable, "-c", script, str(home)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    # While the store is open: the database and SQLite's -wal and -shm beside it.
    assert json.loads(proc.stdout) == {"kvchat.db": "0o600", "kvchat.db-wal": "0o600",
                                       "kvchat.db-shm": "0o600"}
    assert mode(home) == 0o700
    for path in (home / "ui-prefs.json", home / "exports" / "conversation-1.md",
                 home / "state-cache" / "a.kvstate"):
        assert mode(path) == 0o600, path
    assert mode(home / "exports") == 0o700 and mode(home / "state-cache") == 0o700
    assert mode(tmp_path / "fresh") == 0o777  # a parent as mkdir -p makes it (umask 0)


def test_an_existing_dir_keeps_its_mode(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    private_dir(shared)
    save_prefs(UiPrefs(theme="y"), shared / "ui-prefs.json")
    assert mode(shared) == 0o755 and mode(shared / "ui-prefs.json") == 0o600


def test_the_apps_export_replaces_its_own_file_whole(chat: Path, tmp_path: Path) -> None:
    with Store(chat) as store:
        first = export_conversation(store, 1, "md", tmp_path / "exports")
        store.add_message(1, "user", "later")
        again = export_conversation(store, 1, "md", tmp_path / "exports")
    assert first == again and "later" in again.read_text() and mode(again) == 0o600


# -- replies streaming in another process ------------------------------------------------


def test_a_live_owner_keeps_its_reply_and_a_dead_one_loses_it(tmp_path: Path) -> None:
    db = tmp_path / "kvchat.db"
    script = ("import sys, time\n"
              "from pathlib import Path\n"
              "from engine.store import Store\n"
              "s = Store(Path(sys.argv[1]))\n"
              "cid = s.create_conversation('c', None)\n"
              "mid = s.add_message(cid, 'assistant', 'half a rep', status='streaming')\n"
              "print(mid, flush=True)\n"
              "time.sleep(120)\n")
    child = subprocess.Popen([sys.executable, "-c", script, str(db)], cwd=ROOT,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        int(child.stdout.readline())
        with Store(db) as store:
            assert store.recover_interrupted() == 0  # its process still runs
            assert rows(db) == [("assistant", "half a rep", "streaming")]
            mine = store.add_message(1, "assistant", "mine", status="streaming")
            assert store.recover_interrupted() == 0  # this process's own, too
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
            assert store.recover_interrupted() == 1
            assert rows(db)[0] == ("assistant", "half a rep", "interrupted")  # text kept
            assert store.message(mine).status == "streaming"
    finally:
        child.kill()
        child.wait(timeout=30)


def test_owners_that_cannot_be_checked_are_judged_by_their_heartbeat() -> None:
    now = time.time()
    elsewhere = json.dumps({"host": "another-host", "pid": 1, "start": "x"})
    assert owner_alive(elsewhere, now - 5, now)
    assert not owner_alive(elsewhere, now - STALE_S - 1, now)
    for unknown in (None, "", "not json", '{"pid": "x"}'):
        assert owner_alive(unknown, now - 5, now)
        assert not owner_alive(unknown, now - STALE_S - 1, now)
    me = json.loads(this_process())
    reused = json.dumps({**me, "pid": 1, "start": "another start"})
    assert process_start(1) is not None  # init runs; its start differs from the one stored
    assert not owner_alive(reused, now, now)
    assert owner_alive(this_process(), now - STALE_S - 1, now)


def test_a_second_kvchat_leaves_a_reply_streaming_in_another_one(kvchat_home: Path) -> None:
    env = {**os.environ, "KVCHAT_HOME": str(kvchat_home)}
    with HostileTextServer(reply="slow words " * 30, delay_s=0.1) as slow, \
            HostileTextServer(reply="quick") as quick:
        first = subprocess.Popen([kvchat_exe(), "ask", "--base-url", slow.base_url,
                                  "--route", "chat", "tell me slowly"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not any(
                    r[2] == "streaming" and r[1] for r in _rows_if_any(kvchat_home)):
                time.sleep(0.1)
            second = run_kvchat("ask", "--base-url", quick.base_url, "--route", "chat",
                                "meanwhile", home=kvchat_home)
            assert second.returncode == 0, second.stderr
            assert first.poll() is None  # still streaming when the second one started
            statuses = [r[2] for r in rows(kvchat_home / "kvchat.db")]
            assert statuses[:2] == ["complete", "streaming"], statuses
            assert first.wait(timeout=120) == 0
        finally:
            first.kill()
            first.wait(timeout=30)
    final = rows(kvchat_home / "kvchat.db")
    assert [r[2] for r in final] == ["complete"] * 4
    assert final[1][1] == "slow words " * 30 and final[3][1] == "quick"


def _rows_if_any(home: Path) -> list[tuple[str, str, str]]:
    try:
        return rows(home / "kvchat.db")
    except sqlite3.OperationalError:  # not created yet
        return []


def test_an_old_store_migrates_and_its_crashed_reply_is_recovered(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db, isolation_level=None)
    version = MIGRATIONS.index(OWNER_SCHEMA)  # the schema before replies had owners
    for script in MIGRATIONS[:version]:
        conn.executescript(script)
    conn.execute(f"PRAGMA user_version = {version}")
    conn.execute("INSERT INTO conversations (title, created_at, updated_at) VALUES "
                 "('old', 1, 1)")
    conn.execute("INSERT INTO messages (conversation_id, role, content, status, created_at,"
                 " updated_at) VALUES (1, 'assistant', 'cut short', 'streaming', 1, 1)")
    conn.close()
    with Store(db) as store:
        assert store._conn.execute("PRAGMA user_version").fetchone()[0] == version + 1
        assert store.recover_interrupted() == 1  # unwritten since long ago: dead
    assert rows(db) == [("assistant", "cut short", "interrupted")]


# -- schema patterns -----------------------------------------------------------------------


CATASTROPHIC = {"type": "object", "properties": {"a": {"type": "string",
                                                       "pattern": "^(a+)+$"}},
                "required": ["a"]}


def test_a_catastrophic_pattern_is_checked_in_linear_time() -> None:
    """RE2 matches it; with a backtracking engine the 5,000-character case takes
    2^5000 steps and this test would never end."""
    assert type(compiled("^(a+)+$")).__module__.startswith("re2")
    result = check_json(json.dumps({"a": "a" * 29 + "!"}), CATASTROPHIC)
    assert result.errors == ["$.a: 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaa!' does not match '^(a+)+$'"]
    for n in (29, 5000):
        assert not check_json(json.dumps({"a": "a" * n + "!"}), CATASTROPHIC).ok
        assert check_json(json.dumps({"a": "a" * n}), CATASTROPHIC).ok
    keys = {"type": "object", "patternProperties": {"^(a+)+$": {"type": "integer"}},
            "additionalProperties": False}
    result = check_json(json.dumps({"a" * 40 + "!": 1}), keys)
    assert result.errors == ["$: 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa!' does not match "
                             "any of the regexes: '^(a+)+$'"]


@pytest.mark.parametrize(("schema", "problem"), [
    ({"type": "string", "pattern": "^(?=a)a+$"}, "pattern '^(?=a)a+$' cannot be matched in "
     "linear time (RE2: invalid perl operator: (?=; lookaround and backreferences are not "
     "supported)"),
    ({"type": "string", "pattern": "(a)\\1"}, "pattern '(a)\\\\1' cannot be matched in linear "
     "time (RE2: invalid escape sequence: \\1; lookaround and backreferences are not "
     "supported)"),
    ({"type": "object", "patternProperties": {"^x": {}}, "unevaluatedProperties": False},
     "unevaluatedProperties together with patternProperties is not supported (its property "
     "names would be matched by a backtracking regex engine)"),
])
def test_patterns_re2_cannot_run_are_refused_at_load(schema: dict, problem: str) -> None:
    assert schema_problem(schema) == problem


def test_ask_with_a_catastrophic_schema_is_refused_or_checked(kvchat_home: Path,
                                                        tmp_path: Path) -> None:
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps(CATASTROPHIC))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"type": "string", "pattern": "(?<=a)b"}))
    refused = run_kvchat("ask", "--schema", str(bad), "hi", home=kvchat_home)
    assert refused.returncode == 2
    assert refused.stderr.splitlines() == [
        f"kvchat: error: {bad}: pattern '(?<=a)b' cannot be matched in linear time (RE2: "
        "invalid perl operator: (?<=; lookaround and backreferences are not supported)"]
    with HostileTextServer(reply=json.dumps({"a": "a" * 29 + "!"})) as server:
        proc = run_kvchat("ask", "--base-url", server.base_url, "--schema", str(schema),
                          "give me a", home=kvchat_home)
    assert proc.returncode == 1, proc.stderr  # malformed after every attempt, and said so
    assert "still malformed after" in proc.stderr
    with Store(kvchat_home / "kvchat.db") as store:
        assert store.messages(1)[0].content == "give me a"  # kept


# -- a budget the model does not fit ------------------------------------------------------


@pytest.mark.parametrize("command", [("ask", "hi"), ()])
def test_a_budget_set_too_small_is_refused_before_loading(command: tuple[str, ...],
                                                           kvchat_home: Path) -> None:
    """kvchat ask and the app alike: the plan's reason, in one line, exit 2 (the plan
    needs the header only: no weights are loaded)."""
    proc = run_kvchat("--budget", "1B", *command, home=kvchat_home)
    assert proc.returncode == 2
    [line] = proc.stderr.splitlines()
    assert line.startswith("kvchat: error: ") and \
        "does not fit the memory budget that was set: needs " in line and \
        line.endswith("of system memory, the budget is 0.00 GiB")
