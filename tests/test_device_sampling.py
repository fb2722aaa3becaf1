"""Greedy decoding with the argmax inside llama.cpp's graph (``greedy_in_graph``).

Forced on here (``auto`` uses it only where the output layer is on a GPU): the CPU
backend runs the same in-graph chain, so every path is checked against the host argmax
on the real model.
"""

from __future__ import annotations

from engine.api import ChatMessage, ChatRequest
from engine.backends.local import LocalEngine
from engine.config import ModelConfig, SamplingConfig, SpeculativeConfig
from engine.decode.generator import Generator
from engine.decode.sampling.chain import GreedyArgmax
from engine.decode.sampling.in_graph import DeviceGreedy
from engine.events import Done, Eviction
from engine.structured.spec import OutputSpec
from tests.conftest import chat_request
from tests.test_kv_eviction import _view, assert_in_step
from tests.test_speculative import REPEAT, STORY, collect, greedy_tokens


async def test_in_graph_greedy_is_the_host_argmax_across_evictions() -> None:
    # ignore_eos bans the end-of-turn ids (checked on the host next to the graph's
    # choice), and a 256-cell context makes the reply slide the window several times.
    host, _, eng = await greedy_tokens("off", REPEAT, 400, n_ctx=256, in_graph="off")
    await eng.close()
    graph, events, eng = await greedy_tokens("off", REPEAT, 400, n_ctx=256, in_graph="on")
    try:
        assert isinstance(await eng.run_on_engine_thread(lambda g: g.samplers._device),
                          DeviceGreedy)
        assert sum(isinstance(e, Eviction) for e in events) >= 2
        assert graph == host
        assert_in_step(await eng.run_on_engine_thread(_view))
    finally:
        await eng.close()


async def test_verification_rows_come_from_the_graph_with_the_same_choices() -> None:
    # Prompt lookup's verification batches several rows of one sequence through the
    # in-graph chain, and the near-tie guard reads the chain's copy of each row. The
    # off switch is off: it follows measured times, and both runs must draft alike.
    host, host_events, eng = await greedy_tokens("prompt-lookup", STORY, 160, in_graph="off",
                                                 adaptive=False)
    await eng.close()
    graph, events, eng = await greedy_tokens("prompt-lookup", STORY, 160, in_graph="on",
                                             adaptive=False)
    try:
        done, host_done = events[-1], host_events[-1]
        assert isinstance(done, Done) and isinstance(host_done, Done)
        assert done.accepted_tokens > 0
        assert graph == host
        assert (done.drafted_tokens, done.accepted_tokens) == (
            host_done.drafted_tokens, host_done.accepted_tokens)
        assert_in_step(await eng.run_on_engine_thread(_view))
    finally:
        await eng.close()


async def test_other_samplers_detach_the_graph_chain_and_greedy_reattaches() -> None:
    prompt = [ChatMessage(role="user", content="Name a colour.")]
    sampled = SamplingConfig(temperature=0.9, seed=7, max_tokens=24)
    greedy = SamplingConfig(temperature=0, max_tokens=24)

    async def replies(in_graph: str) -> list[str]:
        eng = LocalEngine(ModelConfig(n_ctx=512, greedy_in_graph=in_graph),  # type: ignore[arg-type]
                          speculative=SpeculativeConfig(mode="off"))
        await eng.start()
        texts = []
        try:
            for params in (greedy, sampled, greedy):
                done = (await collect(eng.chat(chat_request(prompt, params))))[-1]
                assert isinstance(done, Done)
                texts.append(done.text)
                kind = await eng.run_on_engine_thread(lambda g: type(g.samplers._device))
                # attached for greedy replies only, and kept between them
                assert kind is (DeviceGreedy if in_graph == "on" and params is greedy
                                else type(None))
            # The grammar filter reads raw logits rows, which an attached chain would
            # leave stale: its reply must be the one the host-only engine gives.
            done = (await collect(eng.chat(chat_request(prompt, greedy,
                                                        constraint=OutputSpec(format="list")))))[-1]
            assert isinstance(done, Done)
            texts.append(done.text)
        finally:
            await eng.close()
        return texts

    on, off = await replies("on"), await replies("off")
    # A seeded sampled reply is the host chain's draw, not a token the graph picked.
    assert on == off
    assert on[0] == on[2] and on[1] != on[0]


async def test_one_chain_attached_at_load_serves_every_greedy_reply() -> None:
    prompt = [ChatMessage(role="user", content="Count to ten.")]
    greedy = SamplingConfig(temperature=0, max_tokens=16)

    def banned_best(g: Generator) -> tuple[int, int]:
        """The last row's choice with its winner banned, as the engine's greedy sampler
        makes it (the in-graph chain or the host argmax)."""
        sampler = g.samplers.for_request(_request(greedy))
        assert isinstance(sampler, DeviceGreedy | GreedyArgmax)
        top = sampler.sample(g.lm.ctx)
        sampler.banned = frozenset({top})
        try:
            return top, sampler.sample(g.lm.ctx)
        finally:
            g.samplers.release(sampler)

    results = []
    for in_graph in ("on", "off"):
        eng = LocalEngine(ModelConfig(n_ctx=512, greedy_in_graph=in_graph),  # type: ignore[arg-type]
                          speculative=SpeculativeConfig(mode="off"))
        await eng.start()
        try:
            chain = await eng.run_on_engine_thread(lambda g: g.samplers._device)
            # Attached by the warm-up decode at load, which left nothing in the cache.
            assert isinstance(chain, DeviceGreedy) is (in_graph == "on")
            assert await eng.run_on_engine_thread(lambda g: g.cache.used) == 0
            # Banning the end of turn:
            await collect(eng.chat(chat_request(prompt, greedy, ignore_eos=True)))
            done = (await collect(eng.chat(chat_request(prompt, greedy))))[-1]
            assert isinstance(done, Done)
            # Banned ids or not, the same chain: no re-attach, no graph re-planning.
            assert await eng.run_on_engine_thread(lambda g: g.samplers._device) is chain
            results.append((done.text, await eng.run_on_engine_thread(banned_best)))
        finally:
            await eng.close()
    (graph_text, (graph_top, graph_next)), (host_text, host_best) = results
    assert graph_text == host_text
    # A banned winner falls back to the host's choice among the rest of the row.
    assert graph_next != graph_top
    assert (graph_top, graph_next) == host_best


def _request(sampling: SamplingConfig) -> ChatRequest:
    return ChatRequest(messages=[], sampling=sampling)
