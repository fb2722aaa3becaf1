"""The state cache with several sequences (engine/batch/saved.py), on the real default
model and real state files: an idle sequence pushed out for another conversation is
saved and restored on its conversation's next turn, idle sequences saved at close resume
in the next engine (a parallel one, and where the key allows a single-sequence one), and
a restore with no room left in a shared pool is a miss that still answers right."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from engine.api import ChatMessage
from engine.backends.local import LocalEngine
from engine.config import CacheConfig, ModelConfig, SamplingConfig, SpeculativeConfig
from engine.events import Done, Event, PromptEvaluated, StateCacheNote
from tests.conftest import chat_request

GREEDY = SamplingConfig(temperature=0.0, max_tokens=16, seed=0)
SYSTEM = ChatMessage(role="system", content="You are a helpful assistant.")
# The system prompt's turn is fewer tokens than min_tokens (32): a new conversation
# that shares only it with a saved one restores nothing.


def user(text: str) -> ChatMessage:
    return ChatMessage(role="user", content=text)


A1 = [SYSTEM, user("Name three colours of the rainbow and say one short thing about "
                   "each of them, please, in plain words for a child.")]
B1 = [SYSTEM, user("Write a short poem about rain falling on a tin roof at night.")]
C1 = [SYSTEM, user("List four animals that live in the sea.")]


@dataclass
class Turn:
    text: str
    done: Done
    prompt: PromptEvaluated
    notes: list[StateCacheNote] = field(default_factory=list)

    @property
    def cells(self) -> int:
        """Cells its sequence holds after it: the prompt and the reply, but a last
        token cut off by max_tokens, which is never decoded."""
        return (self.prompt.prompt_tokens + self.done.completion_tokens
                - (self.done.finish_reason == "length"))

    def actions(self) -> list[str]:
        return [n.action for n in self.notes]


def engine(path: Path, layout: str, cache: CacheConfig, parallel: int = 2,
           n_ctx: int = 1024) -> LocalEngine:
    return LocalEngine(ModelConfig(path=path, n_ctx=n_ctx, parallel=parallel,
                                   kv_layout=layout),  # type: ignore[arg-type]
                       GREEDY, speculative=SpeculativeConfig(mode="off"), cache=cache)


async def ask(eng: LocalEngine, messages: Sequence[ChatMessage],
              sampling: SamplingConfig | None = None, **options: object) -> Turn:
    events: list[Event] = [e async for e in eng.chat(chat_request(messages, sampling,
                                                                   **options))]
    done = events[-1]
    assert isinstance(done, Done), done
    prompt = next(e for e in events if isinstance(e, PromptEvaluated))
    return Turn(done.text, done, prompt, [e for e in events if isinstance(e, StateCacheNote)])


async def answers(eng: LocalEngine, *conversations: Sequence[ChatMessage]) -> list[Turn]:
    await eng.start()
    try:
        return [await ask(eng, c) for c in conversations]
    finally:
        await eng.close()


def then(first: Sequence[ChatMessage], turn: Turn, question: str) -> list[ChatMessage]:
    return [*first, ChatMessage(role="assistant", content=turn.text), user(question)]


def saved_in(tmp_path: Path) -> CacheConfig:
    return CacheConfig(dir=tmp_path / "states")


@pytest.mark.parametrize("layout", ["shared", "split"])
async def test_a_conversation_pushed_out_comes_back_restored(
        default_path: Path, tmp_path: Path, layout: str) -> None:
    eng = engine(default_path, layout, saved_in(tmp_path))
    await eng.start()
    try:
        a1 = await ask(eng, A1)
        b1 = await ask(eng, B1)  # the other free sequence
        c1 = await ask(eng, C1)  # takes A's sequence over: A is saved first
        a2 = then(A1, a1, "Which of them is your favourite?")
        back = await ask(eng, a2)  # frees B's (saved) and restores A into it
    finally:
        await eng.close()
    assert b1.actions() == []
    assert c1.actions() == ["save"] and c1.notes[0].tokens == a1.cells
    assert c1.prompt.restored_tokens == 0
    assert back.actions() == ["save", "restore"]
    assert back.notes[0].tokens == b1.cells
    assert back.notes[1].tokens == a1.cells and back.notes[1].tier == "ram"
    # What the turn reuses when A never left its sequence: everything A1 left in it.
    assert back.prompt.restored_tokens == back.prompt.reused_tokens == a1.cells
    assert back.prompt.evaluated_tokens == back.prompt.prompt_tokens - a1.cells
    control = await answers(engine(default_path, layout, CacheConfig(enabled=False)),
                            A1, a2)
    assert a1.text == control[0].text
    assert back.text == control[1].text
    assert control[1].prompt.restored_tokens == 0


@pytest.mark.parametrize("layout", ["shared", "split"])
async def test_idle_sequences_saved_at_close_resume_in_the_next_engine(
        default_path: Path, tmp_path: Path, layout: str) -> None:
    a1, = await answers(engine(default_path, layout, saved_in(tmp_path)), A1)
    a2 = then(A1, a1, "Which of them is your favourite?")
    resumed, = await answers(engine(default_path, layout, saved_in(tmp_path)), a2)
    assert resumed.actions() == ["restore"] and resumed.notes[0].tier == "disk"
    # A new process tokenizes the reply's text again: at least the first prompt's
    # cells serve the next one.
    restored = resumed.prompt.restored_tokens
    assert restored == resumed.prompt.reused_tokens >= a1.prompt.prompt_tokens
    assert resumed.prompt.evaluated_tokens == resumed.prompt.prompt_tokens - restored
    fresh, = await answers(engine(default_path, layout, CacheConfig(enabled=False)), a2)
    assert resumed.text == fresh.text and fresh.prompt.reused_tokens == 0
    # The single-sequence path shares a shared pool's state format and key; a split
    # stream's state is kept apart by its key.
    single, = await answers(engine(default_path, layout, saved_in(tmp_path), parallel=1), a2)
    if layout == "shared":
        assert "restore" in single.actions()
        assert single.prompt.restored_tokens >= a1.prompt.prompt_tokens
        assert single.text == fresh.text
    else:
        assert single.actions() == ["miss"]
        assert "window settings" in single.notes[0].reason
        assert single.prompt.restored_tokens == 0


async def test_a_restore_with_no_room_in_a_shared_pool_is_a_miss(
        default_path: Path, tmp_path: Path) -> None:
    long = GREEDY.model_copy(update={"max_tokens": 200})
    eng = engine(default_path, "shared", saved_in(tmp_path), parallel=3, n_ctx=512)
    await eng.start()
    try:
        a1 = await ask(eng, A1, long, ignore_eos=True)
        b1 = await ask(eng, B1, long, ignore_eos=True)  # a free sequence; A stays idle
        c1 = await ask(eng, C1, GREEDY.model_copy(update={"max_tokens": 60}),
                       ignore_eos=True)  # too few free cells: A is saved and freed
        again = await ask(eng, A1)  # A's cells are more than B and C leave free
    finally:
        await eng.close()
    assert a1.cells + b1.cells + c1.cells > 512 > a1.cells + b1.cells
    assert 512 - b1.cells - c1.cells < a1.cells
    assert b1.actions() == [] and c1.actions() == ["save"]
    assert c1.notes[0].tokens == a1.cells
    assert again.actions() == ["miss"]
    assert again.notes[0].reason == "llama.cpp refused the saved state"
    assert again.prompt.restored_tokens == again.prompt.reused_tokens == 0
    assert again.prompt.evaluated_tokens == again.prompt.prompt_tokens
    fresh, = await answers(engine(default_path, "shared", CacheConfig(enabled=False),
                                  parallel=3, n_ctx=512), A1)
    assert again.text == fresh.text
