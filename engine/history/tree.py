"""A conversation is a tree of messages: editing a message or answering it again adds a
sibling and replaces nothing. Each conversation shows one path, from its first message
to its active leaf; that path is what :meth:`MessageTree.messages` returns, so what
reads a conversation as a list still reads what the user sees.

Every message remembers when it was last on the active path (``visited_at``): switching
to a message continues below it down the children most recently shown or created.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict

from engine.errors import BranchError, ConversationNotFound, MessageNotFound
from engine.history.owner import this_process

Role = Literal["system", "user", "assistant"]
Status = Literal["complete", "streaming", "cancelled", "interrupted", "error"]
Parent = int | None | Literal["active"]
"""Where a message goes: under a message, at the root (None), or under the active leaf."""

TREE_SCHEMA = """
ALTER TABLE messages ADD COLUMN parent_id INTEGER REFERENCES messages(id) ON DELETE CASCADE;
ALTER TABLE messages ADD COLUMN visited_at REAL NOT NULL DEFAULT 0;
ALTER TABLE conversations ADD COLUMN active_leaf_id INTEGER;
UPDATE messages SET visited_at = created_at, parent_id = (
    SELECT MAX(p.id) FROM messages AS p
    WHERE p.conversation_id = messages.conversation_id AND p.id < messages.id);
UPDATE conversations SET active_leaf_id = (
    SELECT MAX(m.id) FROM messages AS m WHERE m.conversation_id = conversations.id);
CREATE INDEX messages_parent ON messages(parent_id, id);
"""
"""Schema version 4: every stored conversation becomes one path, in its old order."""

_COLUMNS = ("m.id, m.conversation_id, m.role, m.content, m.status, m.created_at,"
            " m.updated_at, m.stats, m.parent_id")

# The path from a message up to its root, depth 0 at the message.
_UP = """
WITH RECURSIVE up(id, depth) AS (
    SELECT ?, 0
    UNION ALL
    SELECT m.parent_id, up.depth + 1 FROM messages AS m JOIN up ON m.id = up.id
    WHERE m.parent_id IS NOT NULL)
"""


class MessageRow(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: int
    conversation_id: int
    role: Role
    content: str
    status: Status
    created_at: float
    updated_at: float
    stats: dict[str, Any] | None
    parent_id: int | None = None
    """The message this one follows; None for a first message."""


def check_fields(role: str | None, status: str | None) -> None:
    # The CHECK constraints would catch these too, but as an opaque IntegrityError.
    if role is not None and role not in get_args(Role):
        raise ValueError(f"unknown message role {role!r}")
    if status is not None and status not in get_args(Status):
        raise ValueError(f"unknown message status {status!r}")


def _row(r: Sequence[Any]) -> MessageRow:
    return MessageRow(id=r[0], conversation_id=r[1], role=r[2], content=r[3], status=r[4],
                      created_at=r[5], updated_at=r[6],
                      stats=None if r[7] is None else json.loads(r[7]), parent_id=r[8])


def _path(conn: sqlite3.Connection, mid: int) -> list[MessageRow]:
    rows = conn.execute(f"{_UP} SELECT {_COLUMNS} FROM up JOIN messages AS m ON m.id = up.id"
                        " ORDER BY up.depth DESC", (mid,)).fetchall()
    return [_row(r) for r in rows]


def _message(conn: sqlite3.Connection, mid: int) -> MessageRow:
    row = conn.execute(f"SELECT {_COLUMNS} FROM messages AS m WHERE m.id = ?",
                       (mid,)).fetchone()
    if row is None:
        raise MessageNotFound(f"no message with id {mid}")
    return _row(row)


def _active_leaf(conn: sqlite3.Connection, cid: int) -> int | None:
    row = conn.execute("SELECT active_leaf_id FROM conversations WHERE id = ?",
                       (cid,)).fetchone()
    if row is None:
        raise ConversationNotFound(f"no conversation with id {cid}")
    return None if row[0] is None else int(row[0])


def _activate(conn: sqlite3.Connection, cid: int, leaf: int, now: float) -> None:
    """Make ``leaf`` the conversation's active leaf, its path the most recently visited
    at every fork, so switching above it later comes back down the same way."""
    conn.execute(f"{_UP} UPDATE messages SET visited_at = ? WHERE id IN (SELECT id FROM up)",
                 (leaf, now))
    conn.execute("UPDATE conversations SET active_leaf_id = ? WHERE id = ?", (leaf, cid))


class MessageTree:
    """Needs ``_read``/``_write`` from the store it is mixed into."""

    def _read(self) -> AbstractContextManager[sqlite3.Connection]: ...  # pragma: no cover
    def _write(self) -> AbstractContextManager[sqlite3.Connection]: ...  # pragma: no cover

    def add_message(self, cid: int, role: Role, content: str, status: Status = "complete",
                    stats: dict[str, Any] | None = None, *,
                    parent_id: Parent = "active") -> int:
        """A new message under ``parent_id`` (by default the active leaf, which
        continues the conversation); it becomes the active leaf."""
        check_fields(role, status)
        stats_json = None if stats is None else json.dumps(stats)
        now = time.time()
        with self._write() as conn:
            leaf = _active_leaf(conn, cid)
            parent = leaf if parent_id == "active" else parent_id
            if parent is not None and _message(conn, parent).conversation_id != cid:
                raise MessageNotFound(f"message {parent} is not in conversation {cid}")
            conn.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (now, cid))
            owner = this_process() if status == "streaming" else None
            cur = conn.execute(
                "INSERT INTO messages (conversation_id, role, content, status, created_at,"
                " updated_at, stats, parent_id, visited_at, owner)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (cid, role, content, status, now, now, stats_json, parent, now, owner))
            mid = int(cur.lastrowid or 0)
            _activate(conn, cid, mid, now)
            return mid

    def messages(self, cid: int) -> list[MessageRow]:
        """The conversation's active path: its first message to the active leaf."""
        with self._read() as conn:
            leaf = _active_leaf(conn, cid)
            return [] if leaf is None else _path(conn, leaf)

    def message(self, mid: int) -> MessageRow:
        """One message; MessageNotFound if there is none with this id."""
        with self._read() as conn:
            return _message(conn, mid)

    def path_to(self, mid: int) -> list[MessageRow]:
        """The messages from the first one down to ``mid``, ``mid`` included."""
        with self._read() as conn:
            _message(conn, mid)
            return _path(conn, mid)

    def siblings(self, mid: int) -> tuple[list[MessageRow], int]:
        """The messages sharing ``mid``'s parent (``mid`` among them), oldest first,
        and ``mid``'s index there."""
        with self._read() as conn:
            row = _message(conn, mid)
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM messages AS m WHERE m.conversation_id = ?"
                " AND m.parent_id IS ? ORDER BY m.id", (row.conversation_id, row.parent_id))
            found = [_row(r) for r in rows.fetchall()]
        return found, [r.id for r in found].index(mid)

    def tree(self, cid: int) -> list[MessageRow]:
        """Every message of the conversation, on any branch, oldest first."""
        with self._read() as conn:
            _active_leaf(conn, cid)
            rows = conn.execute(f"SELECT {_COLUMNS} FROM messages AS m"
                                " WHERE m.conversation_id = ? ORDER BY m.id", (cid,))
            return [_row(r) for r in rows.fetchall()]

    def set_active(self, cid: int, mid: int) -> int:
        """Show the path through ``mid``: below it, each fork takes the child most
        recently shown or created. Returns the new active leaf."""
        with self._write() as conn:
            if _message(conn, mid).conversation_id != cid:
                raise MessageNotFound(f"message {mid} is not in conversation {cid}")
            leaf = mid
            while (child := conn.execute(
                    "SELECT id FROM messages WHERE parent_id = ?"
                    " ORDER BY visited_at DESC, id DESC LIMIT 1", (leaf,)).fetchone()):
                leaf = int(child[0])
            _activate(conn, cid, leaf, time.time())
            return leaf

    def branch_from(self, mid: int) -> int:
        """A new conversation holding a copy of the path down to ``mid``, titled after
        the original with `` (branch)``; returns its id. Attempts are not copied."""
        now = time.time()
        with self._write() as conn:
            source = _message(conn, mid)
            title, model = conn.execute("SELECT title, model FROM conversations WHERE id = ?",
                                        (source.conversation_id,)).fetchone()
            cid = int(conn.execute(
                "INSERT INTO conversations (title, model, created_at, updated_at)"
                " VALUES (?, ?, ?, ?)", (f"{title} (branch)", model, now, now)).lastrowid or 0)
            parent: int | None = None
            for row in _path(conn, mid):
                parent = int(conn.execute(
                    "INSERT INTO messages (conversation_id, role, content, status, created_at,"
                    " updated_at, stats, parent_id, visited_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (cid, row.role, row.content, row.status, row.created_at, row.updated_at,
                     None if row.stats is None else json.dumps(row.stats), parent,
                     now)).lastrowid or 0)
            conn.execute("UPDATE conversations SET active_leaf_id = ? WHERE id = ?",
                         (parent, cid))
            return cid

    def editable(self, mid: int, cid: int | None = None) -> MessageRow:
        """The user message ``mid`` (of conversation ``cid`` where given), for an edit;
        a one-line error for another conversation's message or a reply."""
        row = self.message(mid)
        if cid is not None and row.conversation_id != cid:
            raise MessageNotFound(f"message {mid} is not in conversation {cid}")
        if row.role != "user":
            what = "a reply" if row.role == "assistant" else "a system message"
            raise BranchError(f"message {mid} is {what}: only your own messages can be"
                              " edited (regenerating asks for another reply)")
        return row

    def to_answer_again(self, cid: int) -> MessageRow:
        """The last user message on the active path, whose reply a regeneration
        replaces; BranchError when there is none."""
        for row in reversed(self.messages(cid)):
            if row.role == "user":
                return row
        raise BranchError(f"conversation {cid} has no message to answer again")


def tree_markdown(rows: list[MessageRow], active: set[int]) -> list[str]:
    """The whole tree as Markdown blocks: each message headed with its id, and at every
    fork each branch marked (which fork, which branch, whether it is the one shown)."""
    children: dict[int | None, list[MessageRow]] = {}
    for row in rows:
        children.setdefault(row.parent_id, []).append(row)
    parts: list[str] = []
    # Depth first without recursion: a long conversation is a deep tree.
    stack: list[tuple[MessageRow, str]] = []

    def push(parent: int | None) -> None:
        kids = children.get(parent, [])
        for number, kid in reversed(list(enumerate(kids, 1))):
            where = "at the start" if parent is None else f"after message {parent}"
            shown = ", shown" if kid.id in active else ""
            mark = f"> **Branch {number} of {len(kids)}** {where}{shown}" \
                if len(kids) > 1 else ""
            stack.append((kid, mark))

    push(None)
    while stack:
        row, mark = stack.pop()
        if mark:
            parts.append(mark)
        parts.append(f"## {row.role.capitalize()} · message {row.id}")
        if row.content:
            parts.append(row.content.rstrip("\n"))
        if row.status != "complete":
            parts.append(f"_({row.status})_")
        push(row.id)
    return parts
