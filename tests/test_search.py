"""Full-text search over the store: the FTS5 index kept in step by triggers, queries
that are never FTS5 syntax, the LIKE fallback where FTS5 is missing, and
``kvchat search``."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

import engine.history.search as search_module
from engine.errors import SearchError
from engine.history.search import fts_query
from engine.store import Store
from tests.conftest import run_kvchat


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "kvchat.db") as s:
        yield s


def _hits(store: Store, query: str) -> list[tuple[int | None, str]]:
    return [(h.message_id, h.snippet) for h in store.search(query)]


def test_messages_and_titles_are_found_ranked_and_marked(store: Store) -> None:
    rust = store.create_conversation("Rust lifetimes", "smollm2")
    q = store.add_message(rust, "user", "What is a lifetime in Rust?")
    long = store.add_message(rust, "assistant",
                             "A borrow, then " + "other words about something else. " * 20)
    short = store.add_message(rust, "assistant", "A lifetime is how long a borrow lives.")
    other = store.create_conversation("Cooking", None)
    store.add_message(other, "user", "How long to boil an egg?")
    for n in range(6):  # so that "borrow" is a rare word, as bm25 needs
        store.add_message(other, "assistant", f"Step {n}: wait.")

    assert store.search_mode == "fts5"
    hits = store.search("borrow")
    # bm25: the same one mention counts more in a short message than in a long one.
    assert [h.message_id for h in hits] == [short, long]
    assert hits[0].rank < hits[1].rank < 0
    assert hits[0].snippet == "A lifetime is how long a [borrow] lives."
    assert hits[1].snippet.startswith("A [borrow], then other")
    assert hits[1].snippet.endswith("…")
    hit = store.search("lifetime rust")[0]
    assert (hit.conversation_id, hit.conversation_title, hit.role) == (rust, "Rust lifetimes",
                                                                       "user")
    assert hit.message_id == q and hit.snippet == "What is a [lifetime] in [Rust]?"
    title = [h for h in store.search("cooking") if h.message_id is None]
    assert [(h.conversation_id, h.role, h.snippet) for h in title] == [
        (other, None, "[Cooking]")]
    marked = store.search("egg", marks=("<b>", "</b>"))
    assert marked[0].snippet == "How long to boil an <b>egg</b>?"
    # Diacritics and case fold: "Rüst" finds "Rust".
    assert store.search("RÜST")[0].message_id == q
    assert len(store.search("borrow", limit=1)) == 1


def test_the_last_word_is_a_prefix_unless_the_query_ends_in_a_space(store: Store) -> None:
    cid = store.create_conversation("chat", None)
    mid = store.add_message(cid, "user", "The capital of France")
    assert [h.message_id for h in store.search("fra")] == [mid]
    assert store.search("fra ") == []
    assert store.search("capi of") == []  # only the last word is a prefix
    assert fts_query('say "hi') == '"say" """hi"*'


@pytest.mark.parametrize("query", ['"foo', "AND", "foo AND", "-x", "x -", "NOT x", "a OR",
                                   "NEAR(a b)", "col:x", "^start", "(unclosed", "a*b",
                                   "'single", "'; DROP TABLE messages; --"])
def test_user_queries_are_never_fts_syntax(store: Store, query: str) -> None:
    cid = store.create_conversation("chat", None)
    mid = store.add_message(cid, "user", f"plain words and the query {query} itself")
    assert mid in [h.message_id for h in store.search(query)]
    assert store.get_conversation(cid).message_count == 1


@pytest.mark.parametrize("query", ["", "   ", "*", "-", '"', "* - ()"])
def test_a_query_without_words_is_a_one_line_error(store: Store, query: str) -> None:
    with pytest.raises(SearchError, match="nothing to search for"):
        store.search(query)


def _index_matches_its_tables(path: Path) -> None:
    """FTS5's integrity check, against the tables it indexes too (rank 1): it raises
    where the index and the rows differ."""
    raw = sqlite3.connect(path)
    try:
        for table in ("message_search", "title_search"):
            raw.execute(f"INSERT INTO {table}({table}, rank) VALUES ('integrity-check', 1)")
    finally:
        raw.close()


def test_triggers_keep_the_index_in_step(store: Store) -> None:
    cid = store.create_conversation("Untitled", None)
    mid = store.add_message(cid, "assistant", "", status="streaming")
    store.update_message(mid, content="partial answe")
    assert [h.message_id for h in store.search("partial")] == [mid]
    store.update_message(mid, content="the final answer", status="complete")
    assert store.search("partial ") == [] and store.search("final")[0].message_id == mid
    store.rename_conversation(cid, "Renamed topic")
    assert store.search("untitled ") == []
    assert [h.conversation_id for h in store.search("renamed")] == [cid]
    branch = store.branch_from(mid)
    assert {h.conversation_id for h in store.search("final")} == {cid, branch}
    store.delete_conversation(cid)
    assert {h.conversation_id for h in store.search("final")} == {branch}
    assert [h.conversation_title for h in store.search("renamed")] == [
        "Renamed topic (branch)"]
    _index_matches_its_tables(store.path)


def test_without_fts5_search_falls_back_to_like_and_the_index_is_built_later(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "kvchat.db"
    monkeypatch.setattr(search_module, "fts5_available", lambda: False)
    with Store(path) as s:
        assert s.search_mode == "like"
        cid = s.create_conversation("Café notes", None)
        mid = s.add_message(cid, "user", "Line one.\nThe 100% pure_code, here.")
        assert [(h.message_id, h.snippet) for h in s.search("pure code")] == [
            (mid, "Line one. The 100% [pure]_[code], here.")]
        assert s.search("100%")[0].message_id == mid
        with pytest.raises(SearchError):
            s.search("%")
        assert [h.message_id for h in s.search("café")] == [None]
    monkeypatch.undo()
    with Store(path) as s:  # FTS5 again: the index is built with what was written
        assert s.search_mode == "fts5"
        assert [h.message_id for h in s.search("pure")] == [mid]
    monkeypatch.setattr(search_module, "fts5_available", lambda: False)
    with Store(path) as s:  # its triggers would fail every write without FTS5
        later = s.add_message(cid, "assistant", "written without the index")
    monkeypatch.undo()
    with Store(path) as s:
        assert [h.message_id for h in s.search("without index")] == [later]
    _index_matches_its_tables(path)


def test_search_command(kvchat_home: Path) -> None:
    with Store(kvchat_home / "kvchat.db") as store:
        cid = store.create_conversation("Terminal \x1b]0;pwned\x07title", None)
        mid = store.add_message(cid, "assistant",
                                "colour \x1b[31m red \x1b[0m text\u202eevil\nnext line")
    proc = run_kvchat("search", "red", home=kvchat_home)
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stdout and "\x07" not in proc.stdout
    assert "\u202e" not in proc.stdout
    # What a terminal would act on shows as an escape (tui.safe_text).
    assert proc.stdout.splitlines() == [
        f"conversation {cid} · message {mid} (assistant) · Terminal \\x1b]0;pwned\\x07title",
        "    colour \\x1b[31m [red] \\x1b[0m text\\u202eevil next line"]
    as_json = json.loads(run_kvchat("search", "red", "--json", "--limit", "1",
                                    home=kvchat_home).stdout)
    assert [(h["message_id"], h["role"]) for h in as_json] == [(mid, "assistant")]
    none = run_kvchat("search", "absent", home=kvchat_home)
    assert (none.returncode, none.stdout) == (0, "")
    assert "nothing stored matches 'absent'" in none.stderr
    bad = run_kvchat("search", '"*"', home=kvchat_home)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "kvchat: error: nothing to search for in '\"*\"': no letters or digits"]


def test_an_index_missing_a_table_is_built_again(tmp_path: Path) -> None:
    path = tmp_path / "kvchat.db"
    with Store(path) as s:
        cid = s.create_conversation("Old chat", None)
        mid = s.add_message(cid, "user", "an old message about penguins")
    raw = sqlite3.connect(path)
    raw.executescript("DROP TABLE message_search; DROP TABLE title_search;")
    raw.close()
    with Store(path) as s:  # the triggers are there but not the tables: built again
        assert [h.message_id for h in s.search("penguins")] == [mid]
