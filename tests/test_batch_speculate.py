"""Prompt-lookup speculation per reply of the batch (engine/batch/speculate.py): each
reply drafts from its own conversation and verifies in the step's one decode.

Exact token equality with the same replies decoded without speculation holds on a
batch-invariant load whose steps stay within its invariant rows (speculate.py keeps
them there) and whose sequences each have their own stream (``kv_layout = "split"``):
a rejected draft's cell is then taken again only by its own sequence, in the order of
its positions. On the shared layout another sequence's next token may land in it and
sum its attention in another order (as with the holes a finished reply leaves,
tests/test_batch.py), so there only the cells' bookkeeping is checked.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import llama_cpp
import pytest

from engine.api import ChatMessage
from engine.backends.local import LocalEngine
from engine.batch.decoder import BatchDecoder
from engine.config import ModelConfig, SamplingConfig, SpeculativeConfig
from engine.events import Done, Event, Eviction, SpecStats, TokenChunk
from engine.model.loader import LoadedModel, load_model
from tests.conftest import chat_request
from tests.test_batch import drain

LOOKUP = SpeculativeConfig(mode="prompt-lookup")
GREEDY = SamplingConfig(temperature=0.0, max_tokens=60, seed=0)
LISTS = ("Repeat this list twice: apple, banana, cherry, date, elderberry, fig, grape, "
         "apple, banana, cherry, date, elderberry, fig, grape.",
         "Repeat after me: one two three four five six seven eight, one two three four "
         "five six seven eight.")


def load(path: Path, layout: str) -> LoadedModel:
    return load_model(ModelConfig(path=path, n_ctx=512, parallel=3, kv_layout=layout),
                      invariant=True)


@pytest.fixture(scope="module")
def split(default_path: Path) -> Iterator[LoadedModel]:
    """Three sequences, 256 cells each, batch-invariant."""
    lm = load(default_path, "split")
    yield lm
    lm.close()


def prompt(lm: LoadedModel, text: str) -> list[int]:
    return lm.tokenize(lm.chat_format.render([ChatMessage(role="user", content=text)]),
                       add_bos=False)


class Checked(BatchDecoder):
    """Checks before every decode that no reply holds more cells than its budget, and
    after every step that each reply's sequence holds exactly its ``cells``."""

    edge = 0
    """Decodes in which a reply's drafts reached the last cell of its budget."""

    def decode(self, prompts: int) -> None:
        for slot in self.slots.values():
            assert len(slot.cells) <= slot.budget, (slot.reply, len(slot.cells), slot.budget)
            self.edge += bool(slot.drafts) and len(slot.cells) == slot.budget
        super().decode(prompts)

    def step(self) -> list[Event]:
        events = super().step()
        mem = llama_cpp.llama_get_memory(self.lm.ctx.ctx)
        for slot in self.slots.values():
            if slot.seq >= 0 and slot.group.phase == "decode":
                assert llama_cpp.llama_memory_seq_pos_max(mem, slot.seq) + 1 \
                    == len(slot.cells) <= slot.budget
                assert not slot.drafts  # verified and cleared within the step
        return events


def together(lm: LoadedModel, prompts: list[list[int]], spec: SpeculativeConfig | None,
             sampling: SamplingConfig = GREEDY, log: list[Event] | None = None,
             ignore_eos: bool = True, **options: object) -> tuple[list[list[int]], Checked]:
    dec = Checked(lm, 3, chunk=4, speculative=spec, **options)  # type: ignore[arg-type]
    ids = [dec.add(p, sampling, ignore_eos=ignore_eos)[0] for p in prompts]
    got = drain(dec, log)
    return [got[i] for i in ids], dec


def test_speculating_replies_give_the_greedy_tokens_they_give_without(
        split: LoadedModel) -> None:
    prompts = [prompt(split, text) for text in LISTS]
    plain, dec = together(split, prompts, None)
    dec.close()
    log: list[Event] = []
    fast, dec = together(split, prompts, LOOKUP, log=log)
    assert fast == plain and all(len(t) == GREEDY.max_tokens for t in fast)
    st = dec.stats
    # Drafts landed, and some were rejected: their cells left each sequence again.
    assert 0 < st.accepted < st.drafted
    assert st.max_rows <= split.invariant_rows
    spec = {e.reply: e for e in log if isinstance(e, SpecStats)}  # each reply's last
    done = {e.reply: e for e in log if isinstance(e, Done)}
    assert sorted(spec) == sorted(done) == [0, 1]
    for reply in (0, 1):
        assert spec[reply].accepted == done[reply].accepted_tokens > 0
        assert spec[reply].drafted == done[reply].drafted_tokens
        # Timed from launch to tokens on steps that read no prompt, against a plain step.
        assert spec[reply].spec_s_per_token > 0 and spec[reply].plain_s_per_token > 0
        assert spec[reply].speedup == pytest.approx(
            spec[reply].plain_s_per_token / spec[reply].spec_s_per_token)
    assert sum(e.accepted for e in spec.values()) == st.accepted
    dec.close()


def test_an_end_of_turn_inside_a_round_ends_the_reply_there(split: LoadedModel) -> None:
    prompts = [prompt(split, text) for text in (LISTS[0].replace("twice", "exactly"),
                                                LISTS[1])]
    room = GREEDY.model_copy(update={"max_tokens": 120})
    plain, dec = together(split, prompts, None, room, ignore_eos=False)
    dec.close()
    log: list[Event] = []
    fast, dec = together(split, prompts, LOOKUP, room, log, ignore_eos=False)
    assert fast == plain
    assert [e.finish_reason for e in log if isinstance(e, Done)] == ["stop", "stop"]
    # The prompts end their turn as the replies do: an end of turn was drafted and
    # accepted, with drafts after it, and the idle sequences hold what a plain loop
    # leaves (prompt and reply, not the end of turn).
    idle = sorted(dec.ledger.idle.values(), key=lambda s: s.reply)
    mem = llama_cpp.llama_get_memory(split.ctx.ctx)
    for slot, p, reply in zip(idle, prompts, fast, strict=True):
        assert slot.cells == p + reply
        assert llama_cpp.llama_memory_seq_pos_max(mem, slot.seq) + 1 == len(slot.cells)
    dec.close()


def test_max_tokens_and_cancel_end_a_speculating_reply(split: LoadedModel) -> None:
    prompts = [prompt(split, text) for text in LISTS]
    (whole, _), dec = together(split, prompts, None)
    dec.close()
    dec = Checked(split, 3, chunk=4, speculative=LOOKUP)
    short = dec.add(prompts[0], GREEDY.model_copy(update={"max_tokens": 27}),
                    ignore_eos=True)[0]
    doomed = dec.add(prompts[1], GREEDY, ignore_eos=True)[0]
    log: list[Event] = []
    while (spec := dec.slots[doomed].spec) is not None and spec.accepted < 4:
        log += dec.step()
    seq = dec.slots[doomed].seq
    dec.cancel(doomed)
    mem = llama_cpp.llama_get_memory(split.ctx.ctx)
    assert llama_cpp.llama_memory_seq_pos_max(mem, seq) == -1
    drain(dec, log)
    got = {i: [t for e in log if isinstance(e, TokenChunk) and e.reply == i
               for t in e.token_ids] for i in (short, doomed)}
    ends = {e.reply: e for e in log if isinstance(e, Done)}
    assert ends[doomed].finish_reason == "cancelled" and ends[doomed].accepted_tokens >= 4
    assert 0 < len(got[doomed]) < GREEDY.max_tokens
    # The limit lands inside a round: the reply stops at it, on the tokens it gives alone.
    assert ends[short].finish_reason == "length" and ends[short].accepted_tokens > 0
    assert got[short] == whole[:27]
    dec.close()


def test_a_speculating_reply_near_its_window_stays_in_its_budget(split: LoadedModel) -> None:
    prompts = [prompt(split, LISTS[1])]
    long = GREEDY.model_copy(update={"max_tokens": 90})
    (plain,), dec = together(split, prompts, None, long, window=64)
    dec.close()
    log: list[Event] = []
    (fast,), dec = together(split, prompts, LOOKUP, long, log, window=64)
    slid = [e for e in log if isinstance(e, Eviction) and e.reason == "generation"]
    assert len(slid) > 1 and all(e.used_before <= 64 for e in slid)
    assert dec.stats.accepted > 0 and dec.edge > 0 and fast == plain
    dec.close()


def test_the_shared_layout_keeps_each_speculating_sequence_exact(default_path: Path) -> None:
    lm = load(default_path, "shared")
    try:
        prompts = [prompt(lm, text) for text in LISTS]
        got, dec = together(lm, prompts, LOOKUP)  # Checked: cells exact after each step
        assert all(len(t) == GREEDY.max_tokens for t in got)
        assert 0 < dec.stats.accepted < dec.stats.drafted
        dec.close()
    finally:
        lm.close()


async def test_the_engine_speculates_per_answer_unless_off(default_path: Path) -> None:
    sampled = SamplingConfig(temperature=0.2, max_tokens=40, seed=5)
    req = chat_request([ChatMessage(role="user", content=LISTS[0])])
    for mode, expect in (("prompt-lookup", [0, 1]), ("off", [])):
        engine = LocalEngine(ModelConfig(path=default_path, n_ctx=512, parallel=2), sampled,
                             speculative=SpeculativeConfig(mode=mode))  # type: ignore[arg-type]
        await engine.start()
        try:
            events = [e async for e in engine.answers(req, 2)]
        finally:
            await engine.close()
        spec = [e for e in events if isinstance(e, SpecStats)]
        assert sorted({e.reply for e in spec}) == expect
        assert all(e.accepted > 0 for e in spec if e.reply is not None)
        done = [e for e in events if isinstance(e, Done)]
        assert len(done) == 2
        assert all((d.accepted_tokens or 0) > 0 for d in done) == bool(expect)
