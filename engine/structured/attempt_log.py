"""Every attempt at a structured reply, kept for review (``kvchat retries``, the app's
retry screen). A mixin of :class:`engine.store.Store`: same file, same lock."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

from pydantic import BaseModel, ConfigDict

from engine.errors import StoreError
from engine.events import RetryStrategy

ATTEMPTS_SCHEMA = """
CREATE TABLE attempts (
    id INTEGER PRIMARY KEY,
    message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    number INTEGER NOT NULL,
    strategy TEXT NOT NULL,
    format TEXT NOT NULL,
    content TEXT NOT NULL,
    ok INTEGER NOT NULL,
    found TEXT NOT NULL DEFAULT '',
    errors TEXT NOT NULL DEFAULT '[]',
    prompt_change TEXT NOT NULL DEFAULT '',
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    elapsed_s REAL NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    UNIQUE (message_id, number)
);
CREATE INDEX attempts_message ON attempts(message_id, number);
"""

ATTEMPTS_TRUNCATED = """
ALTER TABLE attempts ADD COLUMN truncated INTEGER NOT NULL DEFAULT 0;
"""
"""Schema version 3: whether an attempt was cut off before it ended by itself."""


class AttemptRow(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: int
    message_id: int
    number: int
    """1 for the reply as generated, then one per retry."""
    strategy: RetryStrategy
    format: str
    content: str
    """The attempt's raw text (for a repair: the repaired JSON)."""
    ok: bool
    found: str
    errors: list[str]
    prompt_change: str
    """What the attempt's prompt added; empty when the prompt was unchanged."""
    completion_tokens: int
    elapsed_s: float
    created_at: float
    truncated: bool = False
    """Cut off at ``completion_tokens`` (its token limit or a full context) before it
    ended by itself; such an attempt never passes."""

    @property
    def cut_off_note(self) -> str:
        """``cut off at N tokens`` for a truncated attempt, else empty."""
        return f"cut off at {self.completion_tokens} tokens" if self.truncated else ""


class RetriedReply(BaseModel):
    """A structured reply that needed more than one attempt, or failed."""

    model_config = ConfigDict(frozen=True)

    message_id: int
    conversation_id: int
    conversation_title: str
    prompt: str
    """The user message it answered."""
    attempts: int
    ok: bool
    """Whether the last attempt passed its check."""
    strategies: list[RetryStrategy]
    first_error: str
    created_at: float


class AttemptLog:
    """Needs ``_read``/``_write`` from the store it is mixed into."""

    def _read(self) -> AbstractContextManager[sqlite3.Connection]: ...  # pragma: no cover
    def _write(self) -> AbstractContextManager[sqlite3.Connection]: ...  # pragma: no cover

    def add_attempt(self, message_id: int, number: int, strategy: RetryStrategy, fmt: str,
                    content: str, ok: bool, *, found: str = "",
                    errors: list[str] | None = None, prompt_change: str = "",
                    completion_tokens: int = 0, elapsed_s: float = 0.0,
                    truncated: bool = False) -> int:
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM messages WHERE id = ?",
                            (message_id,)).fetchone() is None:
                raise StoreError(f"no message with id {message_id}")
            cur = conn.execute(
                "INSERT INTO attempts (message_id, number, strategy, format, content, ok,"
                " found, errors, prompt_change, completion_tokens, elapsed_s, created_at,"
                " truncated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (message_id, number, strategy, fmt, content, int(ok), found,
                 json.dumps(errors or []), prompt_change, completion_tokens, elapsed_s,
                 time.time(), int(truncated)))
            return int(cur.lastrowid or 0)

    def attempts(self, message_id: int) -> list[AttemptRow]:
        """The reply's attempts in order; empty for a reply that was not checked."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT id, message_id, number, strategy, format, content, ok, found, errors,"
                " prompt_change, completion_tokens, elapsed_s, created_at, truncated"
                " FROM attempts"
                " WHERE message_id = ? ORDER BY number", (message_id,)).fetchall()
        return [_attempt(r) for r in rows]

    def retried_replies(self, limit: int | None = None) -> list[RetriedReply]:
        """Replies with more than one attempt or a failed last one, newest first."""
        with self._read() as conn:
            rows = conn.execute(
                """
                SELECT m.id, m.conversation_id, c.title, m.created_at,
                       (SELECT u.content FROM messages u WHERE u.conversation_id =
                        m.conversation_id AND u.id < m.id AND u.role = 'user'
                        ORDER BY u.id DESC LIMIT 1),
                       COUNT(a.id), GROUP_CONCAT(a.strategy, ' '),
                       (SELECT ok FROM attempts l WHERE l.message_id = m.id
                        ORDER BY l.number DESC LIMIT 1),
                       (SELECT errors FROM attempts f WHERE f.message_id = m.id
                        ORDER BY f.number LIMIT 1)
                FROM messages m
                JOIN conversations c ON c.id = m.conversation_id
                JOIN attempts a ON a.message_id = m.id
                GROUP BY m.id
                HAVING COUNT(a.id) > 1 OR MAX(a.ok) = 0
                ORDER BY m.id DESC LIMIT ?
                """, (-1 if limit is None else limit,)).fetchall()
        return list(_retried(rows))


def _attempt(r: tuple[Any, ...]) -> AttemptRow:
    return AttemptRow(id=r[0], message_id=r[1], number=r[2], strategy=r[3], format=r[4],
                      content=r[5], ok=bool(r[6]), found=r[7], errors=json.loads(r[8]),
                      prompt_change=r[9], completion_tokens=r[10], elapsed_s=r[11],
                      created_at=r[12], truncated=bool(r[13]))


def _retried(rows: list[tuple[Any, ...]]) -> Iterator[RetriedReply]:
    for r in rows:
        errors = json.loads(r[8] or "[]")
        yield RetriedReply(message_id=r[0], conversation_id=r[1], conversation_title=r[2],
                           created_at=r[3], prompt=r[4] or "", attempts=r[5],
                           strategies=(r[6] or "").split(), ok=bool(r[7]),
                           first_error=errors[0] if errors else "")
