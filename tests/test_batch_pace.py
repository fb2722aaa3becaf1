"""The batch's prompt chunk sized by time (engine/batch/pace.py), and the one argmax
over every plain greedy row of a step (engine/batch/decoder.py)."""

from __future__ import annotations

from pathlib import Path

import llama_cpp
import numpy as np

from engine.api import ChatMessage
from engine.batch.decoder import BatchDecoder
from engine.batch.pace import FLOOR_TOKENS, START_TOKENS, STEP_RATIO, PromptPace, prompt_budget
from engine.batch.samplers import greedy_tokens
from engine.config import ModelConfig, SamplingConfig
from engine.decode.sampling.chain import best_allowed
from engine.model.loader import load_model


def test_with_nothing_decoding_a_prompt_goes_at_the_full_chunk() -> None:
    assert prompt_budget(PromptPace(), 0, 256) == 256
    assert prompt_budget(PromptPace(0.01, 1e6, 8), 0, 256) == 256


def test_beside_decoding_replies_it_starts_small_until_both_rates_are_measured() -> None:
    pace = PromptPace()
    assert prompt_budget(pace, 3, 256) == START_TOKENS
    pace.observe(0.02, 3, 0)  # a plain step: the prompt rate is still unknown
    assert prompt_budget(pace, 3, 256) == START_TOKENS
    assert prompt_budget(pace, 3, 4) == 4  # never above the chunk


def test_the_budget_keeps_a_step_within_a_few_plain_steps() -> None:
    pace = PromptPace()
    pace.observe(0.02, 3, 0)
    pace.observe(0.02 + 32 / 400, 3, 32)  # 32 prompt tokens cost 80 ms: 400 tokens/s
    assert pace.plain_step_s == 0.02 and round(pace.prompt_tokens_per_s) == 400
    budget = prompt_budget(pace, 3, 256)
    assert budget == int((STEP_RATIO - 1) * 0.02 * 400) == 16
    assert 0.02 + budget / 400 <= STEP_RATIO * 0.02 + 1e-9


def test_a_fast_prompt_grows_the_chunk_at_most_twofold_a_step_up_to_the_chunk() -> None:
    pace = PromptPace()
    pace.observe(0.02, 4, 0)
    pace.observe(0.021, 4, 32)  # prompt tokens nearly free (a GPU): 32 in 1 ms
    assert prompt_budget(pace, 4, 256) == 64
    pace.observe(0.021, 4, 64)
    pace.observe(0.021, 4, 128)
    assert prompt_budget(pace, 4, 256) == 256
    assert prompt_budget(pace, 4, 200) == 200


def test_a_slow_prompt_still_advances_by_the_floor() -> None:
    pace = PromptPace()
    pace.observe(0.01, 2, 0)
    pace.observe(1.0, 2, 8)  # 8 tokens a second
    assert prompt_budget(pace, 2, 256) == FLOOR_TOKENS
    assert prompt_budget(pace, 2, FLOOR_TOKENS - 1) == FLOOR_TOKENS - 1


def test_the_estimates_follow_recent_steps_smoothly() -> None:
    pace = PromptPace()
    pace.observe(0.02, 2, 0)
    pace.observe(0.04, 2, 0)
    assert 0.02 < pace.plain_step_s < 0.04
    pace.observe(0.5, 0, 100)  # nothing decoding: the whole step read the prompt
    assert pace.prompt_tokens_per_s == 200
    assert pace.last_prompt_tokens == 0  # a full chunk alone says nothing of the cap


def test_the_greedy_rows_of_a_step_take_each_row_s_first_maximum(default_path: Path) -> None:
    lm = load_model(ModelConfig(path=default_path, n_ctx=512, parallel=3))
    dec = BatchDecoder(lm, 3)
    try:
        greedy = SamplingConfig(temperature=0.0, max_tokens=8, seed=0)
        for i, text in enumerate(("Name a colour.", "Count to five.", "Say hi.")):
            prompt = lm.tokenize(lm.chat_format.render(
                [ChatMessage(role="user", content=text)]), add_bos=False)
            dec.add(prompt, greedy, ignore_eos=i == 2)  # the third bans end of generation
        checked = 0
        while dec.busy:
            decoding, prompts = dec.fill()
            if not dec.batch.n_tokens():
                continue
            dec.decode(prompts)
            got = greedy_tokens(lm, decoding)
            n_vocab = lm.model.n_vocab()
            for slot in decoding:
                row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(lm.ctx.ctx, slot.row),
                                            shape=(n_vocab,))
                banned = frozenset(lm.eog_tokens()) if slot.ignore_eos else frozenset()
                assert got[slot.reply] == best_allowed(row, banned)
                checked += 1
            dec.sample(decoding)
        assert checked >= 3 * 6
    finally:
        dec.close()
        lm.close()


def test_prompts_asked_together_go_at_the_full_chunk_and_a_joiner_is_paced(
        default_path: Path) -> None:
    lm = load_model(ModelConfig(path=default_path, n_ctx=1024, parallel=4))
    dec = BatchDecoder(lm, 4, chunk=64)
    greedy = SamplingConfig(temperature=0.0, max_tokens=40, seed=0)

    def prompt(text: str) -> list[int]:
        return lm.tokenize(lm.chat_format.render([ChatMessage(role="user", content=text)]),
                           add_bos=False)

    def steps() -> list[tuple[int, int]]:
        """(rows decoded, prompt tokens read) of each step until no prompt is left."""
        out = []
        while any(g.phase == "prefill" for g in dec.ledger.active) or dec.ledger.waiting:
            before = (dec.stats.rows_decoded, dec.stats.prompt_tokens_evaluated)
            dec.step()
            out.append((dec.stats.rows_decoded - before[0],
                        dec.stats.prompt_tokens_evaluated - before[1]))
        return out

    try:
        together = [prompt(f"Question {i}: " + "tell me about the sea " * 8) for i in range(3)]
        for p in together:
            dec.add(p, greedy, ignore_eos=True)
        read = steps()
        # The first reply decodes while the others' prompts are read, a full chunk a step.
        assert any(rows for rows, _ in read[:-1])
        assert all(tokens == 64 for _, tokens in read[:-1])
        assert sum(tokens for _, tokens in read) == sum(map(len, together))
        # A prompt asked while those stream is held to the pace: a short first chunk.
        joiner = prompt("And now: " + "describe a forest in the morning " * 8)
        dec.add(joiner, greedy)
        paced = steps()
        assert paced[0][0] == 3 and 0 < paced[0][1] <= START_TOKENS < 64
        while dec.busy:
            dec.step()
    finally:
        dec.close()
        lm.close()
