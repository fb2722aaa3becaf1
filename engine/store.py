"""Conversations and messages kept in one SQLite file.

Every write is its own committed transaction, so a process killed mid-reply loses at
most the tokens since the last ``update_message`` call. The schema is versioned with
``PRAGMA user_version``: append a script to :data:`MIGRATIONS` to change it, never
edit one that has shipped.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import platformdirs
from pydantic import BaseModel, ConfigDict

from engine.errors import ConversationNotFound, StoreError
from engine.files.atomic import PRIVATE_FILE, private_dir
from engine.history.owner import OWNER_SCHEMA, owner_alive
from engine.history.search import SEARCH_SCHEMA, SearchHit, SearchIndex
from engine.history.tree import (
    TREE_SCHEMA,
    MessageRow,
    MessageTree,
    Parent,
    Role,
    Status,
    check_fields,
    tree_markdown,
)
from engine.structured.attempt_log import (
    ATTEMPTS_SCHEMA,
    ATTEMPTS_TRUNCATED,
    AttemptLog,
    AttemptRow,
    RetriedReply,
)

__all__ = ["MIGRATIONS", "AttemptRow", "ConversationRow", "MessageRow", "Parent",
           "RetriedReply", "Role", "SearchHit", "Status", "Store", "default_data_dir",
           "title_from_prompt"]
"""The rows of the attempt log, the message tree and the search index are defined with
them (mixins of Store) and given back here."""

_SQLITE_MAGIC = b"SQLite format 3\x00"
_TITLE_MAX = 60

# Index i holds the script that takes the schema from version i to i + 1.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE conversations (
        id INTEGER PRIMARY KEY,
        title TEXT NOT NULL,
        model TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        conversation_id INTEGER NOT NULL
            REFERENCES conversations(id) ON DELETE CASCADE,
        role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
        content TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN
            ('complete', 'streaming', 'cancelled', 'interrupted', 'error')),
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        stats TEXT
    );
    CREATE INDEX messages_conversation ON messages(conversation_id, id);
    """,
    ATTEMPTS_SCHEMA,
    ATTEMPTS_TRUNCATED,
    TREE_SCHEMA,
    SEARCH_SCHEMA,
    OWNER_SCHEMA,
)


def default_data_dir() -> Path:
    """``$KVCHAT_HOME`` if set, else the platform's data dir; not created here."""
    home = os.environ.get("KVCHAT_HOME")
    if home:
        return Path(home).expanduser()
    return Path(platformdirs.user_data_dir("kvchat"))


def title_from_prompt(text: str) -> str:
    """A one-line title from a prompt's first non-blank line, at most 60 characters."""
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    title = " ".join(line.split())
    if not title:
        return "Untitled"
    if len(title) > _TITLE_MAX:
        title = title[: _TITLE_MAX - 1].rstrip() + "…"
    return title


class ConversationRow(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: int
    title: str
    model: str | None
    created_at: float
    updated_at: float
    message_count: int
    """Every message stored, on any branch."""
    active_leaf_id: int | None = None
    """The last message of the path shown; None while there are no messages."""


def _statements(script: str) -> Iterator[str]:
    # executescript() commits any open transaction first, which would let a failed
    # migration leave a half-built schema; run statement by statement instead.
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending
            pending = ""
    if pending.strip():
        yield pending


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class Store(AttemptLog, MessageTree, SearchIndex):
    """The conversation store. Safe to share between threads; one lock serialises use."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path).expanduser()
        self._lock = threading.Lock()
        self._check_header()
        try:
            private_dir(self.path.parent)
            # Made here, private: SQLite would make it 0644, and gives its -wal and -shm
            # files the database's own mode.
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE))
        except FileExistsError:
            pass
        except OSError as exc:
            raise StoreError(f"cannot create {self.path}: {_one_line(exc)}") from exc
        try:
            # isolation_level=None: no implicit transactions, so each statement commits
            # at once unless we open one ourselves.
            self._conn = sqlite3.connect(self.path, isolation_level=None,
                                         check_same_thread=False, timeout=5.0)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {self.path}: {_one_line(exc)}") from exc
        try:
            self._configure()
            self._migrate()
        except sqlite3.Error as exc:
            self._conn.close()
            raise StoreError(f"cannot open store {self.path}: {_one_line(exc)}") from exc
        except StoreError:
            self._conn.close()
            raise

    @classmethod
    def open_default(cls) -> Store:
        return cls(default_data_dir() / "kvchat.db")

    def _check_header(self) -> None:
        # SQLite already refuses a foreign file, but checking first means we never hand
        # it to SQLite at all, so nothing (a -wal file, a journal) is created beside it.
        try:
            with self.path.open("rb") as f:
                head = f.read(len(_SQLITE_MAGIC))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StoreError(f"cannot read store {self.path}: {_one_line(exc)}") from exc
        if head and head != _SQLITE_MAGIC:
            raise StoreError(f"{self.path} is not a kvchat store (not an SQLite database)")

    def _configure(self) -> None:
        self._conn.execute("PRAGMA busy_timeout = 5000")
        self._conn.execute("PRAGMA journal_mode = WAL")
        # In WAL mode NORMAL still survives a killed process; it only risks the last
        # commits on power loss, which is fine for chat history.
        self._conn.execute("PRAGMA synchronous = NORMAL")
        self._conn.execute("PRAGMA foreign_keys = ON")

    def _migrate(self) -> None:
        conn = self._conn
        # IMMEDIATE takes the write lock before reading the version, so two processes
        # starting together cannot both run the same migration.
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise StoreError(f"{self.path} has schema version {version}, newer than "
                                 f"this kvchat understands ({len(MIGRATIONS)})")
            for number in range(version, len(MIGRATIONS)):
                if not self._skips_migration(MIGRATIONS[number]):
                    for statement in _statements(MIGRATIONS[number]):
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number + 1}")
            self._ready_search(conn, list(_statements(SEARCH_SCHEMA)))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise StoreError(f"cannot read {self.path}: {_one_line(exc)}") from exc

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One transaction, committed before the lock is released."""
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreError(f"cannot write {self.path}: {_one_line(exc)}") from exc

    # -- conversations -------------------------------------------------------------

    _CONVERSATION_SELECT = """
        SELECT c.id, c.title, c.model, c.created_at, c.updated_at,
               (SELECT COUNT(*) FROM messages m WHERE m.conversation_id = c.id),
               c.active_leaf_id
        FROM conversations c
    """

    @staticmethod
    def _conversation(row: tuple[Any, ...]) -> ConversationRow:
        return ConversationRow(id=row[0], title=row[1], model=row[2], created_at=row[3],
                               updated_at=row[4], message_count=row[5],
                               active_leaf_id=row[6])

    def create_conversation(self, title: str, model: str | None) -> int:
        now = time.time()
        with self._write() as conn:
            cur = conn.execute(
                "INSERT INTO conversations (title, model, created_at, updated_at)"
                " VALUES (?, ?, ?, ?)", (title, model, now, now))
            return int(cur.lastrowid or 0)

    def get_conversation(self, cid: int) -> ConversationRow:
        with self._read() as conn:
            row = conn.execute(self._CONVERSATION_SELECT + " WHERE c.id = ?",
                               (cid,)).fetchone()
        if row is None:
            raise ConversationNotFound(f"no conversation with id {cid}")
        return self._conversation(row)

    def list_conversations(self, limit: int | None = None) -> list[ConversationRow]:
        """Most recently updated first; ``limit=None`` means all."""
        with self._read() as conn:
            rows = conn.execute(
                self._CONVERSATION_SELECT + " ORDER BY c.updated_at DESC, c.id DESC LIMIT ?",
                (-1 if limit is None else limit,)).fetchall()
        return [self._conversation(r) for r in rows]

    def rename_conversation(self, cid: int, title: str) -> None:
        with self._write() as conn:
            cur = conn.execute("UPDATE conversations SET title = ?, updated_at = ? WHERE id = ?",
                               (title, time.time(), cid))
            if cur.rowcount == 0:
                raise ConversationNotFound(f"no conversation with id {cid}")

    def delete_conversation(self, cid: int) -> None:
        """Deletes the conversation and, through the foreign key, its messages."""
        with self._write() as conn:
            cur = conn.execute("DELETE FROM conversations WHERE id = ?", (cid,))
            if cur.rowcount == 0:
                raise ConversationNotFound(f"no conversation with id {cid}")

    # -- messages ------------------------------------------------------------------

    def update_message(self, mid: int, *, content: str | None = None,
                       status: Status | None = None,
                       stats: dict[str, Any] | None = None) -> None:
        """Changes the fields given; ``None`` leaves a field as it is."""
        check_fields(None, status)
        fields: dict[str, Any] = {"content": content, "status": status,
                                  "stats": None if stats is None else json.dumps(stats)}
        changes = {k: v for k, v in fields.items() if v is not None}
        now = time.time()
        changes["updated_at"] = now
        # Keys come from the fixed dict above, never from the caller.
        assignments = ", ".join(f"{k} = ?" for k in changes)
        with self._write() as conn:
            cur = conn.execute(f"UPDATE messages SET {assignments} WHERE id = ?",
                               (*changes.values(), mid))
            if cur.rowcount == 0:
                raise StoreError(f"no message with id {mid} in {self.path}")
            conn.execute("UPDATE conversations SET updated_at = ? WHERE id ="
                         " (SELECT conversation_id FROM messages WHERE id = ?)", (now, mid))

    def recent_prompts(self, limit: int = 500) -> list[str]:
        """The last ``limit`` messages the user sent, across conversations, oldest
        first, a message repeated at once kept once: the message box's history."""
        with self._read() as conn:
            rows = conn.execute("SELECT content FROM messages WHERE role = 'user'"
                                " ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        prompts: list[str] = []
        for (content,) in reversed(rows):
            if content.strip() and (not prompts or prompts[-1] != content):
                prompts.append(content)
        return prompts

    def recover_interrupted(self) -> int:
        """Marks replies left 'streaming' by a process that is gone as 'interrupted'
        (see :mod:`engine.history.owner`); a reply another process is streaming now
        stays as it is. Returns how many were marked."""
        with self._read() as conn:
            rows = conn.execute("SELECT id, owner, updated_at FROM messages"
                                " WHERE status = 'streaming'").fetchall()
        now = time.time()
        dead = [mid for mid, owner, updated_at in rows
                if not owner_alive(owner, updated_at, now)]
        if not dead:
            return 0
        with self._write() as conn:
            # Still streaming: the owner may have ended the reply since it was read.
            return sum(conn.execute("UPDATE messages SET status = 'interrupted', updated_at = ?"
                                    " WHERE id = ? AND status = 'streaming'",
                                    (now, mid)).rowcount for mid in dead)

    # -- export --------------------------------------------------------------------

    def export_markdown(self, cid: int, all_branches: bool = False) -> str:
        """The path shown; ``all_branches``: every message, each fork's branches marked."""
        conv = self.get_conversation(cid)
        parts = [f"# {conv.title}"]
        if conv.model:
            parts.append(f"_Model: {conv.model}_")
        if all_branches:
            parts += tree_markdown(self.tree(cid), {m.id for m in self.messages(cid)})
            return "\n\n".join(parts) + "\n"
        for msg in self.messages(cid):
            parts.append(f"## {msg.role.capitalize()}")
            if msg.content:
                parts.append(msg.content.rstrip("\n"))
            if msg.status != "complete":
                parts.append(f"_({msg.status})_")
        return "\n\n".join(parts) + "\n"

    def export_json(self, cid: int, all_branches: bool = False) -> dict[str, Any]:
        """The path shown as ``messages``; ``all_branches``: every message (each with its
        ``parent_id``), and the path shown as ``active_path``, a list of ids."""
        conv = self.get_conversation(cid)
        data = conv.model_dump(mode="json")
        path = self.messages(cid)
        rows = self.tree(cid) if all_branches else path
        data["messages"] = [m.model_dump(mode="json") for m in rows]
        if all_branches:
            data["active_path"] = [m.id for m in path]
        return data
