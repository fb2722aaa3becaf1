"""Full-text search over every message (any branch) and every conversation title.

Two FTS5 tables index the ``messages`` and ``conversations`` tables in place (external
content), kept in step by triggers. A user's query is never FTS5 syntax: each word is
quoted, so ``"foo``, ``AND``, ``-x`` or ``*`` are words to find, and the last word
matches as a prefix. Where SQLite was built without FTS5 the store still opens, and
search falls back to LIKE (no ranking, newest first); the index is built the first
time a store is opened by an SQLite that has it.
"""

from __future__ import annotations

import functools
import re
import sqlite3
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from engine.errors import SearchError
from engine.history.tree import Role

SEARCH_SCHEMA = """
CREATE VIRTUAL TABLE message_search USING fts5(
    content, content='messages', content_rowid='id',
    tokenize='unicode61 remove_diacritics 2');
CREATE VIRTUAL TABLE title_search USING fts5(
    title, content='conversations', content_rowid='id',
    tokenize='unicode61 remove_diacritics 2');
CREATE TRIGGER message_search_insert AFTER INSERT ON messages BEGIN
    INSERT INTO message_search(rowid, content) VALUES (new.id, new.content);
END;
CREATE TRIGGER message_search_delete AFTER DELETE ON messages BEGIN
    INSERT INTO message_search(message_search, rowid, content)
        VALUES ('delete', old.id, old.content);
END;
CREATE TRIGGER message_search_update AFTER UPDATE OF content ON messages BEGIN
    INSERT INTO message_search(message_search, rowid, content)
        VALUES ('delete', old.id, old.content);
    INSERT INTO message_search(rowid, content) VALUES (new.id, new.content);
END;
CREATE TRIGGER title_search_insert AFTER INSERT ON conversations BEGIN
    INSERT INTO title_search(rowid, title) VALUES (new.id, new.title);
END;
CREATE TRIGGER title_search_delete AFTER DELETE ON conversations BEGIN
    INSERT INTO title_search(title_search, rowid, title) VALUES ('delete', old.id, old.title);
END;
CREATE TRIGGER title_search_update AFTER UPDATE OF title ON conversations BEGIN
    INSERT INTO title_search(title_search, rowid, title) VALUES ('delete', old.id, old.title);
    INSERT INTO title_search(rowid, title) VALUES (new.id, new.title);
END;
INSERT INTO message_search(message_search) VALUES ('rebuild');
INSERT INTO title_search(title_search) VALUES ('rebuild');
"""
"""Schema version 5: the index, filled with every message and title already stored.
Skipped by an SQLite without FTS5 (see :meth:`SearchIndex._ready_search`)."""

_TABLES = ("message_search", "title_search")
_TRIGGERS = tuple(f"{table}_{what}" for table in _TABLES
                  for what in ("insert", "delete", "update"))
_SNIPPET_TOKENS = 12
_LIKE_CONTEXT = 40
"""Characters either side of the first match in a LIKE snippet."""

Marks = tuple[str, str]


class SearchHit(BaseModel):
    model_config = ConfigDict(frozen=True)

    conversation_id: int
    conversation_title: str
    message_id: int | None
    """None where the conversation's title matched."""
    role: Role | None
    snippet: str
    """The matching text around the match, each match between the marks asked for."""
    rank: float
    """bm25, lower is better (0 for every LIKE hit)."""
    created_at: float


@functools.cache
def fts5_available() -> bool:
    """Whether this process's SQLite has FTS5 (a build option; most have it)."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute("CREATE VIRTUAL TABLE probe USING fts5(text)")
    except sqlite3.Error:
        return False
    finally:
        conn.close()
    return True


def query_words(query: str) -> list[str]:
    """The query's words as the user typed them, split on white space; a word with no
    letter or digit in it (``*``, ``-``, ``"``) matches nothing and is dropped."""
    return [word for word in query.split() if any(ch.isalnum() for ch in word)]


def fts_query(query: str) -> str:
    """``query`` as an FTS5 expression: every word a quoted string (quotes inside
    doubled), all of them required, the last one a prefix unless the query ends in a
    space. SearchError when no word is left."""
    words = query_words(query)
    if not words:
        raise SearchError(f"nothing to search for in {query.strip()!r}: no letters or digits")
    quoted = ['"' + word.replace('"', '""') + '"' for word in words]
    if not query[-1:].isspace():
        quoted[-1] += "*"
    return " ".join(quoted)


class SearchIndex:
    """Needs ``_read`` from the store it is mixed into; the store calls
    :meth:`_ready_search` once its schema is current."""

    _search_fts = False

    def _read(self) -> AbstractContextManager[sqlite3.Connection]: ...  # pragma: no cover

    @property
    def search_mode(self) -> Literal["fts5", "like"]:
        """``fts5``, or ``like`` where this SQLite has no FTS5."""
        return "fts5" if self._search_fts else "like"

    @staticmethod
    def _skips_migration(script: str) -> bool:
        """The index's migration is skipped where FTS5 is missing."""
        return script is SEARCH_SCHEMA and not fts5_available()

    def _ready_search(self, conn: sqlite3.Connection, statements: Sequence[str]) -> None:
        """Inside the migration's transaction: an index without FTS5 here loses its
        triggers (they would fail every write); with FTS5, an index that lacks a table
        or a trigger (the store was used without FTS5) is made again from scratch."""
        names = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
        triggers = names & set(_TRIGGERS)
        if not fts5_available():
            for name in triggers:
                conn.execute(f"DROP TRIGGER {name}")
            self._search_fts = False
            return
        if not names >= {*_TRIGGERS, *_TABLES}:
            for name in triggers:
                conn.execute(f"DROP TRIGGER {name}")
            for table in _TABLES:
                conn.execute(f"DROP TABLE IF EXISTS {table}")
            for statement in statements:
                conn.execute(statement)
        self._search_fts = True

    def search(self, query: str, limit: int = 20, marks: Marks = ("[", "]")) -> list[SearchHit]:
        """Messages and titles matching every word of ``query``, best first (bm25),
        at most ``limit``. SearchError for a query with no words."""
        if not self._search_fts:
            return self._search_like(query, limit, marks)
        expression = fts_query(query)
        try:
            with self._read() as conn:
                messages = conn.execute(
                    "SELECT m.conversation_id, c.title, m.id, m.role,"
                    " snippet(message_search, 0, ?, ?, '…', ?), bm25(message_search),"
                    " m.created_at FROM message_search"
                    " JOIN messages AS m ON m.id = message_search.rowid"
                    " JOIN conversations AS c ON c.id = m.conversation_id"
                    " WHERE message_search MATCH ? ORDER BY bm25(message_search) LIMIT ?",
                    (*marks, _SNIPPET_TOKENS, expression, limit)).fetchall()
                titles = conn.execute(
                    "SELECT c.id, c.title, NULL, NULL,"
                    " highlight(title_search, 0, ?, ?), bm25(title_search), c.created_at"
                    " FROM title_search JOIN conversations AS c ON c.id = title_search.rowid"
                    " WHERE title_search MATCH ? ORDER BY bm25(title_search) LIMIT ?",
                    (*marks, expression, limit)).fetchall()
        except sqlite3.OperationalError as exc:  # what quoting cannot foresee
            raise SearchError(f"cannot search for {query.strip()!r}: {exc}") from None
        hits = sorted(messages + titles, key=lambda r: r[5])[:limit]
        return [_hit(r) for r in hits]

    def _search_like(self, query: str, limit: int, marks: Marks) -> list[SearchHit]:
        # Letters and digits only, as FTS5's tokenizer splits: `foo-bar` needs both.
        words = re.findall(r"[^\W_]+", query)
        if not words:
            raise SearchError(f"nothing to search for in {query.strip()!r}: no letters or digits")
        patterns = [f"%{word}%" for word in words]  # letters and digits: nothing to escape
        where = " AND ".join(["{0} LIKE ?"] * len(words))
        with self._read() as conn:
            messages = conn.execute(
                "SELECT m.conversation_id, c.title, m.id, m.role, m.content, 0, m.created_at"
                " FROM messages AS m JOIN conversations AS c ON c.id = m.conversation_id"
                f" WHERE {where.format('m.content')} ORDER BY m.id DESC LIMIT ?",
                (*patterns, limit)).fetchall()
            titles = conn.execute(
                "SELECT c.id, c.title, NULL, NULL, c.title, 0, c.created_at"
                f" FROM conversations AS c WHERE {where.format('c.title')}"
                " ORDER BY c.id DESC LIMIT ?", (*patterns, limit)).fetchall()
        rows = sorted(titles + messages, key=lambda r: -r[6])[:limit]
        return [_hit((*r[:4], like_snippet(r[4], words, marks), *r[5:])) for r in rows]


def like_snippet(text: str, words: list[str], marks: Marks) -> str:
    """Around the first match in ``text``: every word found marked, case ignored,
    white space folded to single spaces."""
    flat = " ".join(text.split())
    pattern = re.compile("|".join(re.escape(w) for w in words), re.IGNORECASE)
    first = pattern.search(flat)
    start = max(0, first.start() - _LIKE_CONTEXT) if first else 0
    end = min(len(flat), (first.end() if first else 0) + _LIKE_CONTEXT)
    window = pattern.sub(lambda m: f"{marks[0]}{m.group(0)}{marks[1]}", flat[start:end])
    return ("…" if start else "") + window + ("…" if end < len(flat) else "")


def _hit(r: Sequence[Any]) -> SearchHit:
    return SearchHit(conversation_id=r[0], conversation_title=r[1], message_id=r[2],
                     role=r[3], snippet=r[4], rank=r[5], created_at=r[6])
