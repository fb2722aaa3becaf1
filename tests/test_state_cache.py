"""The state cache on the real default model: a conversation that comes back (after
another one, a restart, a regenerate or an edit) restores its saved KV state and
evaluates only what is new; a damaged or foreign state is a miss with a reason and the
reply is the one an uncached engine gives; the tiers keep their budgets."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from engine.api import ChatMessage
from engine.backends.local import LocalEngine
from engine.cache.entry import Snapshot
from engine.cache.key import StateKey, model_digest
from engine.cache.pool import StateCache, default_dir
from engine.cache.state_file import encode, read_index, read_state, write_parts
from engine.config import (
    CacheConfig,
    KVCacheConfig,
    KvchatConfig,
    ModelConfig,
    SamplingConfig,
    SpeculativeConfig,
    parse_config,
)
from engine.decode.generator import Generator
from engine.errors import ConfigError
from engine.events import Done, Event, PromptEvaluated, StateCacheNote
from engine.store import default_data_dir
from tests.conftest import chat_request

SAMPLING = SamplingConfig(temperature=0.0, max_tokens=24, seed=0)
SYSTEM = ChatMessage(role="system", content=KvchatConfig().chat.system_prompt)
N_CTX = 1024


def user(text: str) -> ChatMessage:
    return ChatMessage(role="user", content=text)


def reply(text: str) -> ChatMessage:
    return ChatMessage(role="assistant", content=text)


A1 = [SYSTEM, user("Name three colours of the rainbow and say one thing about each.")]
B1 = [SYSTEM, user("Write a short poem about rain on a tin roof at night.")]
C1 = [SYSTEM, user("List four animals that live in the sea.")]


@dataclass
class Turn:
    text: str
    prompt: PromptEvaluated
    notes: list[StateCacheNote] = field(default_factory=list)

    def actions(self) -> list[str]:
        return [n.action for n in self.notes]


async def ask(eng: LocalEngine, messages: Sequence[ChatMessage], **options: Any) -> Turn:
    events: list[Event] = [e async for e in eng.chat(chat_request(messages, **options))]
    done = events[-1]
    assert isinstance(done, Done), done
    prompt = next(e for e in events if isinstance(e, PromptEvaluated))
    return Turn(done.text, prompt, [e for e in events if isinstance(e, StateCacheNote)])


def engine(cache: CacheConfig | None = None, n_ctx: int = N_CTX, kv_type: str = "auto",
           window: KVCacheConfig | None = None) -> LocalEngine:
    return LocalEngine(ModelConfig(n_ctx=n_ctx, kv_type=kv_type), SAMPLING, window,
                       cache=cache)


async def plain(*conversations: Sequence[ChatMessage], n_ctx: int = N_CTX,
                kv_type: str = "auto", window: KVCacheConfig | None = None) -> list[Turn]:
    """The turns on an engine without a state cache."""
    eng = engine(CacheConfig(enabled=False), n_ctx, kv_type, window)
    await eng.start()
    try:
        return [await ask(eng, c) for c in conversations]
    finally:
        await eng.close()


def cells(gen: Generator) -> int:
    return gen.cache.used


def second(first: Sequence[ChatMessage], answer: str, question: str) -> list[ChatMessage]:
    return [*first, reply(answer), user(question)]


async def test_switching_back_evaluates_only_the_new_message() -> None:
    control_1, = await plain(A1)
    a2 = second(A1, control_1.text, "Which of them is your favourite?")
    control = await plain(A1, a2)
    uncached = await plain(A1, B1, a2)
    eng = engine()
    await eng.start()
    try:
        first = await ask(eng, A1)
        held = await eng.run_on_engine_thread(cells)
        other = await ask(eng, B1)
        back = await ask(eng, a2)
    finally:
        await eng.close()
    assert first.text == control[0].text
    assert other.actions() == ["save"]
    assert other.notes[0].tier == "ram" and other.notes[0].tokens == held
    assert back.actions() == ["save", "restore"]  # B saved, A restored
    assert back.notes[1].tokens == held and back.notes[1].tier == "ram"
    # Exactly what the turn evaluates when A never left the cache, and the same reply.
    assert back.prompt.restored_tokens == back.prompt.reused_tokens == held
    assert back.prompt.reused_tokens == control[1].prompt.reused_tokens
    assert back.prompt.evaluated_tokens == control[1].prompt.evaluated_tokens
    assert back.text == control[1].text
    # Without the cache the system prompt is all that survives B.
    assert uncached[2].prompt.reused_tokens < held / 2
    assert uncached[2].prompt.evaluated_tokens > back.prompt.evaluated_tokens + held / 2


async def test_a_new_engine_resumes_from_the_disk(kvchat_home: Path) -> None:
    eng = engine()
    await eng.start()
    try:
        first = await ask(eng, A1)
        held = await eng.run_on_engine_thread(cells)
    finally:
        await eng.close()  # the live conversation is saved, RAM goes to disk
    files = list((kvchat_home / "state-cache").glob("*.kvstate"))
    assert len(files) == 1
    a2 = second(A1, first.text, "Which of them is your favourite?")
    control = await plain(A1, a2)
    again = engine()
    await again.start()
    try:
        back = await ask(again, a2)
    finally:
        await again.close()
    assert back.actions() == ["restore"] and back.notes[0].tier == "disk"
    assert back.prompt.restored_tokens == back.prompt.reused_tokens == held
    assert back.prompt.evaluated_tokens == control[1].prompt.evaluated_tokens
    assert back.text == control[1].text


def fresh_tokens(messages: Sequence[ChatMessage]) -> Callable[[Generator], list[int]]:
    def tokens(gen: Generator) -> list[int]:
        return gen.lm.tokenize(gen.lm.chat_format.render(messages), add_bos=True)
    return tokens


def shared(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


async def test_regenerate_and_edit_evaluate_only_past_where_they_depart() -> None:
    history = [SYSTEM, user("My cat is called Miso and she is three years old."),
               reply("Miso sounds lovely! Three is a fun age for a cat."),
               user("What should I feed her?")]
    edited = [*history[:3], user("How often should she see a vet?")]
    eng = engine()
    await eng.start()
    try:
        await ask(eng, history)
        await ask(eng, B1)
        regen = await ask(eng, history)  # the same messages: its reply again
        await ask(eng, B1)
        edit = await ask(eng, edited)
        old = await eng.run_on_engine_thread(fresh_tokens(history))
        new = await eng.run_on_engine_thread(fresh_tokens(edited))
    finally:
        await eng.close()
    assert "restore" in regen.actions()
    # Every prompt token was saved: only the last is evaluated, for its logits.
    assert regen.prompt.evaluated_tokens == 1
    assert regen.prompt.restored_tokens == regen.prompt.prompt_tokens - 1
    # The edit departs in the last user message: what comes before it is restored.
    depart = shared(old, new)
    assert 0 < depart < len(new) - 4
    assert "restore" in edit.actions()
    assert edit.prompt.restored_tokens == edit.prompt.reused_tokens == depart
    assert edit.prompt.evaluated_tokens == len(new) - depart


async def test_a_model_switch_saves_the_conversation_for_when_the_model_returns(
        default_path: Path, gemma_path: Path) -> None:
    """Each model gets its own conversation back, Gemma's sliding-window cache too."""
    g1 = [user("The quick brown fox jumps over the lazy dog. The quick brown fox")]
    control_a = await plain(A1)
    a2 = second(A1, control_a[0].text, "Which of them is your favourite?")
    control_a = await plain(A1, a2)
    gemma = LocalEngine(ModelConfig(path=gemma_path, n_ctx=N_CTX), SAMPLING,
                        cache=CacheConfig(enabled=False))
    await gemma.start()
    try:
        control_g = [await ask(gemma, g1)]
        g2 = [*g1, reply(control_g[0].text), user("And then?")]
        control_g.append(await ask(gemma, g2))
    finally:
        await gemma.close()
    eng = engine()
    await eng.start()
    try:
        await ask(eng, A1)
        held = await eng.run_on_engine_thread(cells)
        await eng.switch_model(gemma_path)
        on_gemma = await ask(eng, g1)
        await eng.switch_model(default_path)
        back = await ask(eng, a2)
        await eng.switch_model(gemma_path)
        back_g = await ask(eng, g2)
    finally:
        await eng.close()
    assert on_gemma.actions() == ["save"]  # SmolLM2's conversation, saved at the switch
    assert on_gemma.prompt.restored_tokens == 0
    assert back.prompt.restored_tokens == held
    assert back.prompt.evaluated_tokens == control_a[1].prompt.evaluated_tokens
    assert back.text == control_a[1].text
    assert back_g.prompt.restored_tokens == control_g[1].prompt.reused_tokens > 0
    assert back_g.prompt.evaluated_tokens == control_g[1].prompt.evaluated_tokens
    assert back_g.text == control_g[1].text


@pytest.fixture(scope="module")
def saved_a1(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A state file of A1 as an engine leaves it at close, and A1's reply."""
    folder = tmp_path_factory.mktemp("saved")

    async def run() -> str:
        eng = engine(CacheConfig(dir=folder))
        await eng.start()
        try:
            return (await ask(eng, A1)).text
        finally:
            await eng.close()

    text = asyncio.run(run())
    (path,) = folder.glob("*.kvstate")
    return path, text


def damage(path: Path, how: str) -> None:
    if how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "flipped":
        data = bytearray(path.read_bytes())
        data[-1000] ^= 0xFF
        path.write_bytes(bytes(data))
    elif how == "refused":  # a well-formed file whose state llama.cpp cannot take
        entry = read_index(path)
        data = read_state(entry)
        entry.data = data[: len(data) // 3]
        entry.nbytes = len(entry.data)
        write_parts(path, encode(entry))


@pytest.mark.parametrize(("how", "reason"), [
    ("truncated", "its header says"), ("flipped", "fails its checksum"),
    ("deleted", "was deleted"), ("refused", "llama.cpp refused the saved state"),
    ("other context", "another context size (1024, here 2048)"),
    ("other KV type", "another KV type (q8_0, here f16)"),
    ("other window", "other KV window settings")])
async def test_a_damaged_or_foreign_state_is_a_miss_and_the_reply_is_uncached(
        saved_a1: tuple[Path, str], kvchat_home: Path, how: str, reason: str) -> None:
    path, a1_text = saved_a1
    folder = kvchat_home / "state-cache"
    folder.mkdir(parents=True)
    copy = folder / path.name
    shutil.copy(path, copy)
    if not how.startswith(("deleted", "other")):
        damage(copy, how)
    setup: dict[str, Any] = {"other context": {"n_ctx": 2048},
                             "other KV type": {"kv_type": "f16"},
                             "other window": {"window": KVCacheConfig(sink_tokens=8)}
                             }.get(how, {})
    a2 = second(A1, a1_text, "Which of them is your favourite?")
    # What an engine without saved states answers after the same turns.
    expected = (await plain(C1, a2) if how == "deleted" else await plain(a2, **setup))[-1]
    eng = engine(**setup)
    await eng.start()
    try:
        if how == "deleted":
            await ask(eng, C1)  # the engine has indexed the file by now
            copy.unlink()
        back = await ask(eng, a2)
    finally:
        await eng.close()
    misses = [n for n in back.notes if n.action == "miss"]
    assert len(misses) == 1 and reason in misses[0].reason, back.notes
    assert "restore" not in back.actions()
    assert back.prompt.restored_tokens == 0
    assert back.prompt.evaluated_tokens == expected.prompt.evaluated_tokens
    assert back.text == expected.text


async def test_a_small_ram_budget_spills_the_oldest_to_disk_and_restores_it() -> None:
    # One short conversation's state is about 0.75 MB here: RAM holds one.
    eng = engine(CacheConfig(ram_budget="1MiB", disk_budget="8MiB"))
    await eng.start()
    try:
        first = await ask(eng, A1)
        await ask(eng, B1)  # A1 saved to RAM
        third = await ask(eng, C1)  # B1 saved: A1 moves to disk
        back = await ask(eng, second(A1, first.text, "Which is the brightest?"))
    finally:
        await eng.close()
    assert third.actions() == ["evict", "save"]
    evicted, saved = third.notes
    assert evicted.tier == "ram" and evicted.reason == "moved to disk"
    assert saved.tier == "ram" and saved.disk_bytes > 0
    restore = next(n for n in back.notes if n.action == "restore")
    assert restore.tier == "disk" and back.prompt.restored_tokens > 0
    for note in [*third.notes, *back.notes]:
        assert note.ram_bytes <= note.ram_budget and note.disk_bytes <= note.disk_budget


async def test_with_both_budgets_zero_nothing_is_saved(kvchat_home: Path) -> None:
    eng = engine(CacheConfig(ram_budget=0, disk_budget=0))
    await eng.start()
    try:
        first = await ask(eng, A1)
        other = await ask(eng, B1)
        back = await ask(eng, second(A1, first.text, "Which is the brightest?"))
    finally:
        await eng.close()
    assert other.notes == back.notes == []
    assert back.prompt.restored_tokens == 0
    assert not (kvchat_home / "state-cache").exists()


async def test_a_conversation_with_evictions_restores_only_as_its_own_window() -> None:
    """Cells after an eviction hold a non-contiguous stretch of the conversation: it is
    restored when the prompt extends the same conversation, and only its kept prefix
    can serve a prompt that departs from it."""
    long = SamplingConfig(temperature=0.0, max_tokens=300, seed=0)
    count = [SYSTEM, user("Count upwards from one, one number per line.")]

    async def run(cache: CacheConfig | None, switch: bool) -> list[Turn]:
        # Plain decoding: speculation's evictions make room for drafts too, so where
        # the window slides would follow its timing-driven draft lengths.
        eng = LocalEngine(ModelConfig(n_ctx=256), long, speculative=SpeculativeConfig(mode="off"),
                          cache=cache)
        await eng.start()
        try:
            # 300 tokens each in 256 cells: the window slides in every one of them.
            turns = [await ask(eng, count, ignore_eos=True)]
            if switch:
                turns.append(await ask(eng, B1))
            more = second(count, turns[0].text, "Now count down to one.")
            turns.append(await ask(eng, more, ignore_eos=True))
            if switch:
                turns.append(await ask(eng, B1))
                turns.append(await ask(eng, count))  # departs after the user message
            return turns
        finally:
            await eng.close()

    control = await run(CacheConfig(enabled=False), switch=False)
    first, other, back, _, departing = await run(None, switch=True)
    assert first.text == control[0].text
    saved = other.notes[0]
    assert saved.action == "save" and saved.tokens < first.prompt.prompt_tokens + 300
    assert "restore" in back.actions()
    # The same window as had the count never left: the same cells reused, the same
    # tokens evaluated. (Not the same reply bit for bit: the live cells sit in the
    # slots the evictions left, the restored ones side by side, and attention sums
    # them in another order.)
    assert back.prompt.reused_tokens == control[1].prompt.reused_tokens
    assert back.prompt.restored_tokens == back.prompt.reused_tokens
    assert back.prompt.evaluated_tokens == control[1].prompt.evaluated_tokens
    # The count's kept prefix is the system prompt, which B's cells hold too: nothing
    # past it may come from the evicted state.
    assert departing.prompt.restored_tokens == 0
    assert departing.prompt.reused_tokens <= other.prompt.reused_tokens


# -- the pool alone: tiers, budgets, order (no model) -------------------------------

KEY = StateKey(model="m", n_ctx=1024, kv_type="q8_0", flash_attn=True,
               batch_invariant=True, window="w", llama_cpp="0")


def snap(n: int, start: int = 0) -> Snapshot:
    tokens = list(range(start, start + n))
    return Snapshot(tokens, 4, 0, f"text {start} {n}", tokens)


def put(pool: StateCache, n: int, start: int, nbytes: int = 100_000) -> None:
    pool.put(KEY, snap(n, start), bytearray(nbytes))


def test_the_least_recently_used_goes_first_and_ram_spills_to_disk(tmp_path: Path) -> None:
    pool = StateCache(CacheConfig(ram_budget=250_000, disk_budget=250_000, dir=tmp_path))
    for start in (0, 1000, 2000):  # the third pushes the first out of RAM
        put(pool, 50, start)
    entry, m, _ = pool.best(KEY, "", list(range(50)))
    assert entry is not None and entry.tier == "disk" and m.common == 50
    pool.touch(entry)  # restored: now the most recent on disk
    put(pool, 50, 3000)  # 1000 spills; disk holds two files at most
    put(pool, 50, 4000)  # 2000 spills: the disk's least recent, 1000, goes
    notes = pool.take_notes()
    evictions = [(n.tier, n.reason) for n in notes if n.action == "evict"]
    spilled = ("ram", "moved to disk")
    # The last spill made room on disk first.
    assert evictions == [spilled, spilled, ("disk", "least recently used"), spilled]
    on_disk = sorted(e.snap.cells[0] for e in pool.entries() if e.tier == "disk")
    in_ram = sorted(e.snap.cells[0] for e in pool.entries() if e.tier == "ram")
    assert on_disk == [0, 2000] and in_ram == [3000, 4000]
    for note in notes:
        assert note.ram_bytes <= note.ram_budget and note.disk_bytes <= note.disk_budget


def test_budgets_hold_whatever_comes(tmp_path: Path) -> None:
    pool = StateCache(CacheConfig(ram_budget=300_000, disk_budget=500_000, dir=tmp_path))
    for i, size in enumerate([90_000, 250_000, 10_000, 299_000, 120_000, 60_000, 400_000,
                              700_000, 5_000, 200_000]):
        pool.put(KEY, snap(20 + i, 10_000 * i), bytearray(size))
        assert pool.ram_bytes <= pool.ram_budget and pool.disk_bytes <= pool.disk_budget
    assert sum(f.stat().st_size for f in tmp_path.glob("*.kvstate")) == pool.disk_bytes
    drops = [n for n in pool.take_notes() if n.action == "drop"]
    assert [n.reason for n in drops] == ["0.7 MiB is more than the disk budget"]


def test_a_zero_budget_turns_its_tier_off(tmp_path: Path) -> None:
    disk_only = StateCache(CacheConfig(ram_budget=0, disk_budget="1MiB", dir=tmp_path))
    put(disk_only, 40, 0)
    assert [e.tier for e in disk_only.entries()] == ["disk"]
    ram_only = StateCache(CacheConfig(ram_budget="1MiB", disk_budget=0, dir=tmp_path / "r"))
    put(ram_only, 40, 0)
    ram_only.close()
    assert not (tmp_path / "r").exists()
    assert not StateCache(CacheConfig(ram_budget=0, disk_budget=0)).enabled


def test_a_longer_save_of_the_same_conversation_replaces_the_shorter(tmp_path: Path) -> None:
    pool = StateCache(CacheConfig(ram_budget="1MiB", dir=tmp_path))
    put(pool, 40, 0)
    put(pool, 60, 0)  # the same cells, more of them
    put(pool, 30, 500)
    assert sorted(len(e.snap.cells) for e in pool.entries()) == [30, 60]


def test_the_disk_tier_outlives_the_pool_and_skips_damaged_files(tmp_path: Path) -> None:
    pool = StateCache(CacheConfig(ram_budget="1MiB", dir=tmp_path))
    put(pool, 40, 0)
    put(pool, 40, 100)
    pool.close()
    (tmp_path / "junk.kvstate").write_bytes(b"not a state file at all")
    later = StateCache(CacheConfig(ram_budget="1MiB", dir=tmp_path))
    entry, m, _ = later.best(KEY, "", list(range(100, 140)))
    assert entry is not None and m.common == 40 and entry.tier == "disk"
    assert bytes(later.load(entry)) == bytes(100_000)
    misses = [n.reason for n in later.take_notes() if n.action == "miss"]
    assert misses == ["junk.kvstate is not a state file"]
    assert not (tmp_path / "junk.kvstate").exists()


def test_a_state_is_found_only_under_its_own_key(tmp_path: Path) -> None:
    """Any field of the key that differs hides the state and says why."""
    pool = StateCache(CacheConfig(ram_budget="1MiB", dir=tmp_path))
    put(pool, 50, 0)
    for change, why in [({"model": "other"}, "saved for another model file"),
                        ({"n_ctx": 2048}, "another context size (1024, here 2048)"),
                        ({"kv_type": "f16"}, "another KV type (q8_0, here f16)"),
                        ({"window": "v"}, "saved for other KV window settings"),
                        ({"llama_cpp": "1"}, "another llama.cpp")]:
        entry, m, reason = pool.best(replace(KEY, **change), "", list(range(50)))
        assert entry is None and m.common == 0 and why in reason, change
    entry, m, reason = pool.best(KEY, "", list(range(50)))
    assert entry is not None and m.common == 50 and reason == ""


def test_the_model_digest_covers_its_header_its_end_and_its_size(tmp_path: Path) -> None:
    body = bytes(range(256)) * (3 * 4096 + 17)  # about 3 MiB: head, middle and tail
    base = tmp_path / "model.gguf"
    base.write_bytes(body)
    digests = {model_digest(base)}
    for name, data in [("header", b"X" + body[1:]), ("tail", body[:-1] + b"X"),
                       ("longer", body + b"\0"), ("shorter", body[:-1])]:
        other = tmp_path / f"{name}.gguf"
        other.write_bytes(data)
        digests.add(model_digest(other))
    assert len(digests) == 5
    same = tmp_path / "copy.gguf"
    same.write_bytes(body)  # another path to the same bytes: the same model
    assert model_digest(same) == model_digest(base)


def test_the_disk_tier_lives_in_the_data_dir() -> None:
    assert default_dir() == default_data_dir() / "state-cache"


def test_cache_settings_are_checked() -> None:
    assert parse_config({"cache": {"ram_budget": "0"}}).cache.ram_budget == "0"
    for bad, key in [({"ram_budget": "lots"}, "cache.ram_budget"),
                     ({"disk_budget": -1}, "cache.disk_budget"),
                     ({"ram": "1GiB"}, "cache.ram")]:
        with pytest.raises(ConfigError, match=key):
            parse_config({"cache": bad})


async def test_the_kv_pane_shows_the_pool_once_there_is_one() -> None:
    from textual.app import App, ComposeResult

    from tui.widgets.kv_pane import KVPane
    from tui.widgets.state_cache_view import StateCacheView

    class PaneHost(App[None]):
        def compose(self) -> ComposeResult:
            yield KVPane(id="kv")

    totals = {"entries": 2, "ram_bytes": 3 << 20, "ram_budget": 1 << 30,
              "disk_bytes": 5 << 20, "disk_budget": 2 << 30}
    async with PaneHost().run_test() as pilot:
        pane = pilot.app.query_one(KVPane)
        view = pane.query_one(StateCacheView)
        assert not view.display  # no state cache has spoken yet
        pane.show_state_cache(StateCacheNote(action="evict", tier="ram", tokens=70,
                                             reason="moved to disk", **totals))
        pane.show_state_cache(StateCacheNote(action="restore", tier="disk", tokens=557,
                                             bytes=6_825_108, ms=10.4, **totals))
        await pilot.pause()
        shown = str(view.render())
        assert view.display
    assert shown.splitlines()[:3] == [
        "saved states: 2 · RAM 3.0 MiB/1.0 GiB · disk 5.0 MiB/2.0 GiB",
        "last: restored 557 tokens from disk in 10.4 ms",
        "evictions:"]
    assert shown.splitlines()[3].endswith("evicted 70 tokens from RAM: moved to disk")


def test_a_write_left_half_done_is_cleared_once_stale(tmp_path: Path) -> None:
    stale = tmp_path / ".abc.kvstate.123.tmp"
    fresh = tmp_path / ".def.kvstate.456.tmp"
    stale.write_bytes(b"x" * 100)
    fresh.write_bytes(b"y" * 100)
    old = stale.stat().st_mtime - 3600
    os.utime(stale, (old, old))
    StateCache(CacheConfig(dir=tmp_path)).scan()
    assert not stale.exists() and fresh.exists()  # another process may be writing this


def long_text(words: int) -> str:
    """Prose longer than Gemma 3's sliding window (512 positions)."""
    docs = Path(__file__).resolve().parent.parent / "docs"
    text = " ".join((docs / "kv-cache.md").read_text().split())
    return " ".join(text.split()[:words])


async def test_a_sliding_window_model_never_continues_past_what_its_window_holds(
        gemma_path: Path) -> None:
    """llama.cpp saves only the last window of a sliding-window layer's positions: a
    state restored at its end continues, but a prompt that departs further back than the
    window (from the restored cells or from a saved state) is evaluated from the start,
    and answers as an engine without saved states does."""
    body = long_text(600)
    a1 = [user(body)]
    edited = [user(body[:-600] + " What is this about?")]  # departs ~130 tokens back
    early = [user(body[:900] + " What is this about?")]  # departs ~700 tokens back
    g = ModelConfig(path=gemma_path, n_ctx=2048)
    fresh = LocalEngine(g, SAMPLING, cache=CacheConfig(enabled=False))
    await fresh.start()
    try:
        expected = [await ask(fresh, edited)]
        await ask(fresh, B1)  # as below: the prompt comes after B1
        expected.append(await ask(fresh, early))
    finally:
        await fresh.close()
    eng = LocalEngine(g, SAMPLING, cache=CacheConfig(ram_budget="1GiB", disk_budget=0))
    await eng.start()
    try:
        first = await ask(eng, a1)
        await ask(eng, B1)
        back = await ask(eng, [*a1, reply(first.text), user("Go on.")])
        live = await ask(eng, edited)  # from the restored cells
        await ask(eng, B1)
        saved = await ask(eng, early)  # from a saved state
    finally:
        await eng.close()
    assert back.prompt.prompt_tokens > 700
    assert "restore" in back.actions() and back.prompt.restored_tokens > 600
    # The edit shares most of the prompt with the restored cells, but not the window.
    assert live.prompt.reused_tokens == 0 and live.prompt.restored_tokens == 0
    assert live.prompt.evaluated_tokens == live.prompt.prompt_tokens
    assert live.text == expected[0].text
    misses = [n for n in saved.notes if n.action == "miss"]
    assert len(misses) == 1 and "sliding-window cache holds" in misses[0].reason, saved.notes
    assert saved.prompt.restored_tokens == 0
    # The failed restore cleared the sequence: every token is evaluated.
    assert saved.prompt.evaluated_tokens == saved.prompt.prompt_tokens
    assert saved.text == expected[1].text



async def test_a_sliding_window_model_regenerates_from_a_saved_state(
        gemma_path: Path, tmp_path: Path) -> None:
    """Its window layers at the last prompt's end are saved beside the state: coming
    back to regenerate the reply (in this process, or in a new one from the disk)
    evaluates one token, and answers as the first time."""
    a1 = [user(long_text(600))]
    g = ModelConfig(path=gemma_path, n_ctx=2048)
    cache = CacheConfig(ram_budget="1GiB", disk_budget="1GiB", dir=tmp_path)
    eng = LocalEngine(g, SAMPLING, cache=cache)
    await eng.start()
    try:
        first = await ask(eng, a1)
        await ask(eng, B1)
        again = await ask(eng, a1)  # from RAM
    finally:
        await eng.close()  # the last state, and its window, to disk
    later = LocalEngine(g, SAMPLING, cache=cache)
    await later.start()
    try:
        await ask(later, B1)
        from_disk = await ask(later, a1)
    finally:
        await later.close()
    assert first.prompt.prompt_tokens > 600  # more than the 512-position window
    for turn, tier in ((again, "ram"), (from_disk, "disk")):
        assert [(n.action, n.tier) for n in turn.notes if n.action != "save"] == [
            ("restore", tier)], turn.notes
        assert turn.prompt.evaluated_tokens == 1
        assert turn.prompt.restored_tokens == turn.prompt.prompt_tokens - 1
        assert turn.text == first.text
