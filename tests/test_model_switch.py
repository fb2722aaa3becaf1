"""Switching the model while the engine runs, in process and in the engine process, and
from the app's command palette: the old model freed before the new one loads, the
conversation re-rendered for the new model and read whole once, a model that does not
fit or a broken file refused with the old model kept, a failed load undone."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from textual.message import Message
from textual.pilot import Pilot
from textual.widgets import OptionList

from engine.api import ChatEngine, ChatMessage, ModelChoice
from engine.backends.local import LocalEngine
from engine.backends.process.engine import ProcessEngine
from engine.backends.process.wire import (
    REPLY_ADAPTER,
    REQUEST_ADAPTER,
    Failed,
    ListModels,
    Models,
    Switch,
    Switched,
    encode,
    raised,
)
from engine.backends.remote.engine import OpenAIEngine
from engine.config import (
    CacheConfig,
    EndpointConfig,
    KvchatConfig,
    ModelConfig,
    ModelsConfig,
    SamplingConfig,
)
from engine.errors import ModelDoesNotFit, ModelFileError, ModelLoadError, SwitchUnsupported
from engine.events import Done, Error, Event, ModelLoaded, PromptEvaluated
from engine.store import Store
from tests.conftest import chat_request
from tests.test_tui import PINNED, wait_for
from tests.test_tui_screens import run_command
from tui.app import KvchatApp
from tui.messages import (
    ModelReady,
    ModelSwitched,
    ModelSwitchFailed,
    ModelSwitching,
    ReplyFinished,
    ReplyStarted,
)
from tui.screens.models_screen import ModelsScreen
from tui.widgets.cells_chart import CellsChart
from tui.widgets.kv_pane import KVPane
from tui.widgets.memory_pane import MemoryPane
from tui.widgets.status_line import StatusLine

GREEDY = SamplingConfig(temperature=0.0, max_tokens=16, seed=0)
SMALL_BUDGET = "450MiB"
"""SmolLM2 fits in it with a 1024-token context (0.37 GiB planned), Gemma 3 270M does
not (0.62 GiB)."""
SYSTEM = ChatMessage(role="system",
                     content="You are a helpful assistant. Answer clearly and concisely.")
QUESTION = ChatMessage(role="user", content="What is the capital of France?")
ASK = (SYSTEM, QUESTION)

Make = Callable[..., ChatEngine]
ENGINES: dict[str, Make] = {"local": LocalEngine, "process": ProcessEngine}


@pytest.fixture(autouse=True)
def no_other_stores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the bundled models (and a test's own dirs) are found, whatever this
    machine's LM Studio, Ollama or Hugging Face folders hold."""
    empty = tmp_path / "no-store"
    empty.mkdir()
    for var in ("LMSTUDIO_MODELS", "OLLAMA_MODELS", "HF_HUB_CACHE", "LLAMA_CACHE"):
        monkeypatch.setenv(var, str(empty))


def unknown_architecture(path: Path) -> Path:
    """A well-formed GGUF of an architecture neither the planner nor llama.cpp knows:
    it passes every check before loading and fails in llama.cpp."""
    writer = gguf.GGUFWriter(str(path), "nonesuch")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((8, 16), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


async def reply(engine: ChatEngine, *messages: ChatMessage) -> list[Event]:
    return [e async for e in engine.chat(chat_request(messages, GREEDY))]


def done_of(events: list[Event]) -> Done:
    assert isinstance(events[-1], Done), events[-1]
    return events[-1]


def prompts_of(events: list[Event]) -> list[PromptEvaluated]:
    return [e for e in events if isinstance(e, PromptEvaluated)]


@pytest.fixture(params=sorted(ENGINES))
async def small(request: pytest.FixtureRequest) -> AsyncIterator[ChatEngine]:
    """SmolLM2 started under a budget Gemma does not fit in."""
    engine = ENGINES[request.param](ModelConfig(n_ctx=1024, memory_budget=SMALL_BUDGET),
                                    GREEDY)
    await engine.start()
    yield engine
    await engine.close()


# -- LocalEngine --------------------------------------------------------------------


async def test_local_switch_frees_the_old_model_and_reads_the_conversation_whole(
        default_path: Path, gemma_path: Path, tmp_path: Path) -> None:
    # Without saved states (engine/cache/, whose restores after a switch
    # test_state_cache.py checks): nothing of the live cache may outlive the switch.
    engine = LocalEngine(ModelConfig(n_ctx=1024), GREEDY, cache=CacheConfig(enabled=False))
    fresh = LocalEngine(ModelConfig(path=gemma_path, n_ctx=1024), GREEDY)
    try:
        await engine.start()
        first = done_of(await reply(engine, *ASK))
        assert "Paris" in first.text
        old = await engine.run_on_engine_thread(lambda gen: gen.lm)

        info = await engine.switch_model(gemma_path)
        assert engine.info is info and info.path == str(gemma_path)
        assert info.architecture == "gemma3" and info.n_ctx == 1024
        assert [s.stage for s in engine.memory] == ["planned", "loaded"]
        assert engine.memory[0].fits
        # The old model's llama.cpp context and weights were freed.
        assert old.ctx.ctx is None and old.model.model is None

        conversation = (*ASK, ChatMessage(role="assistant", content=first.text),
                        ChatMessage(role="user", content="And of Germany?"))
        events = await reply(engine, *conversation)
        [prompt] = prompts_of(events)
        # Nothing of SmolLM2's cache is reused: the whole conversation, rendered in
        # Gemma's format, is evaluated once, exactly as by Gemma loaded on its own.
        assert prompt.reused_tokens == 0
        assert prompt.evaluated_tokens == prompt.prompt_tokens
        await fresh.start()
        baseline = await reply(fresh, *conversation)
        assert prompts_of(baseline)[0].prompt_tokens == prompt.prompt_tokens
        switched = done_of(events)
        assert switched.text.strip() and "<|im_" not in switched.text
        assert switched.text == done_of(baseline).text

        back = await engine.switch_model(default_path)
        assert back.path == str(default_path)
        events = await reply(engine, *ASK)
        [prompt] = prompts_of(events)
        assert prompt.reused_tokens == 0
        assert done_of(events).text == first.text
        # The same weights under another name render the same text: a cache that
        # outlived the switch would be reused here, and must not be.
        twin = tmp_path / "twin.gguf"
        twin.symlink_to(default_path)
        await engine.switch_model(twin)
        events = await reply(engine, *ASK, ChatMessage(role="assistant", content=first.text),
                             ChatMessage(role="user", content="And of Germany?"))
        [prompt] = prompts_of(events)
        assert prompt.reused_tokens == 0 and prompt.evaluated_tokens == prompt.prompt_tokens
        assert "Berlin" in done_of(events).text
    finally:
        await fresh.close()
        await engine.close()


# -- ProcessEngine ------------------------------------------------------------------


async def test_process_switch_lists_switches_and_a_new_child_keeps_the_new_model(
        gemma_path: Path) -> None:
    engine = ProcessEngine(ModelConfig(n_ctx=1024), GREEDY)
    try:
        first = await engine.start()
        pid = engine.pid
        models = {m.name: m for m in await engine.list_models()}
        assert {"smollm2", "gemma3-270m"} <= set(models)
        assert models["smollm2"].current and not models["gemma3-270m"].current
        assert models["gemma3-270m"].verdict == "fits" and models["gemma3-270m"].runnable
        assert models["gemma3-270m"].architecture == "gemma3"
        assert not models["gemma3-270m"].chat_template and models["smollm2"].chat_template

        info = await engine.switch_model(models["gemma3-270m"].path)
        assert engine.pid == pid  # the same engine process, another model
        assert engine.info == info and info.path == str(gemma_path)
        assert info.name != first.name
        assert engine.memory and engine.memory[-1].stage == "loaded"
        events = await reply(engine, *ASK)
        [prompt] = prompts_of(events)
        assert prompt.reused_tokens == 0 and prompt.evaluated_tokens == prompt.prompt_tokens
        assert done_of(events).text.strip()
        # The app side counts tokens with Gemma's vocabulary now.
        gemma_count = await asyncio.to_thread(_gemma_count, gemma_path, "Grüße aus Köln")
        for _ in range(200):
            if engine.count_tokens("Grüße aus Köln") == gemma_count:
                break
            await asyncio.sleep(0.05)
        assert engine.count_tokens("Grüße aus Köln") == gemma_count

        # A crash: the next reply's new process loads Gemma, not the start's model.
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        failed = await reply(engine, *ASK)
        assert isinstance(failed[-1], Error) and failed[-1].code == "engine_died"
        again = await reply(engine, *ASK)
        loaded = [e for e in again if isinstance(e, ModelLoaded)]
        assert [e.path for e in loaded] == [str(gemma_path)]
        assert done_of(again).text.strip()
    finally:
        await engine.close()


def _gemma_count(path: Path, text: str) -> int:
    from engine.model.vocab import VocabTokenizer

    vocab = VocabTokenizer(path)
    try:
        return vocab.count(text)
    finally:
        vocab.close()


async def test_process_engine_with_no_model_lists_and_switches_to_one(
        tmp_path: Path, gemma_path: Path) -> None:
    engine = ProcessEngine(ModelConfig(path=tmp_path / "gone.gguf", n_ctx=1024), GREEDY)
    try:
        with pytest.raises(ModelFileError, match="not found"):
            await engine.start()
        models = {m.name: m for m in await engine.list_models()}
        assert not any(m.current for m in models.values())
        info = await engine.switch_model(models["gemma3-270m"].path)
        assert info.path == str(gemma_path) and engine.info == info
        assert done_of(await reply(engine, *ASK)).text.strip()
    finally:
        await engine.close()


# -- refusals and failures, both engines ----------------------------------------------


async def test_a_model_that_does_not_fit_is_refused_and_the_old_one_stays(
        small: ChatEngine, gemma_path: Path) -> None:
    before = small.info
    models = {m.name: m for m in await small.list_models()}
    gemma = models["gemma3-270m"]
    assert gemma.verdict == "does not fit" and not gemma.runnable
    assert "the budget is 0.44 GiB" in gemma.reason
    assert models["smollm2"].verdict == "fits" and models["smollm2"].current
    with pytest.raises(ModelDoesNotFit, match=r"does not fit: needs .* the budget is 0\.44 GiB"):
        await small.switch_model(gemma_path)
    assert small.info == before
    assert "Paris" in done_of(await reply(small, *ASK)).text


async def test_missing_and_broken_files_are_refused_before_anything_is_freed(
        small: ChatEngine, tmp_path: Path) -> None:
    before = small.info
    broken = tmp_path / "models" / "broken.gguf"
    broken.parent.mkdir()
    broken.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + os.urandom(256))
    models = {m.name: m for m in await small.list_models([broken.parent])}
    assert models["broken"].verdict == "broken" and not models["broken"].runnable
    assert models["broken"].reason
    with pytest.raises(ModelFileError, match="model file not found"):
        await small.switch_model(tmp_path / "vanished.gguf")
    with pytest.raises(ModelFileError):
        await small.switch_model(broken)
    assert small.info == before
    assert "Paris" in done_of(await reply(small, *ASK)).text


async def test_a_failed_load_loads_the_previous_model_again(
        small: ChatEngine, tmp_path: Path, default_path: Path) -> None:
    before = small.info
    assert before is not None
    (tmp_path / "odd").mkdir()
    odd = unknown_architecture(tmp_path / "odd" / "nonesuch.gguf")
    models = {m.name: m for m in await small.list_models([odd.parent])}
    assert models["nonesuch"].verdict == "no plan" and models["nonesuch"].runnable
    with pytest.raises(ModelLoadError, match=rf"cannot load nonesuch.gguf: .*; "
                                             rf"{before.name} is loaded again"):
        await small.switch_model(odd)
    after = small.info
    assert after is not None and after != before  # loaded again, not kept
    assert after.path == str(default_path)
    events = await reply(small, *ASK)
    assert prompts_of(events)[0].reused_tokens == 0
    assert "Paris" in done_of(events).text


async def test_a_server_backend_refuses_to_switch() -> None:
    engine = OpenAIEngine(EndpointConfig(base_url="http://127.0.0.1:9/v1"))
    with pytest.raises(SwitchUnsupported, match="cannot switch models"):
        await engine.list_models()
    with pytest.raises(SwitchUnsupported, match="cannot switch models"):
        await engine.switch_model("any.gguf")
    await engine.close()


def test_listings_and_switches_survive_the_wire() -> None:
    choice = ModelChoice(name="gemma3-270m", source="bundled", path="/m/g.gguf",
                         architecture="gemma3", parameters=268_098_176, quant="Q4_K_M",
                         file_bytes=253_115_520, verdict="does not fit",
                         reason="needs 0.62 GiB of system memory, the budget is 0.44 GiB")
    sent = [ListModels(id=3, dirs=["/models"], model=ModelConfig(memory_budget="1GiB")),
            Switch(id=4, path="/m/g.gguf")]
    for message in sent:
        assert REQUEST_ADAPTER.validate_json(encode(message)) == message
    back = [Models(id=3, models=[choice]),
            Switched(id=4, info=None, memory=[], error="ModelLoadError", message="gone")]
    for message in back:
        assert REPLY_ADAPTER.validate_json(encode(message)) == message
    error = raised(Failed(id=4, error="ModelDoesNotFit", message="too big"))
    assert isinstance(error, ModelDoesNotFit) and error.code == "model_does_not_fit"


def test_a_choice_is_runnable_unless_it_does_not_fit_or_is_broken() -> None:
    def choice(verdict: str) -> ModelChoice:
        return ModelChoice(name="m", source="config", path="m.gguf", verdict=verdict)

    assert [choice(v).runnable for v in ("fits", "20 of 33 layers on GPU", "no plan",
                                         "does not fit", "broken")] == \
        [True, True, True, False, False]


# -- the app ----------------------------------------------------------------------------


def switch_app(home: Path, *, budget: str | None = None, dirs: Sequence[Path] = (),
               ) -> tuple[KvchatApp, list[Message], list[str]]:
    """An app on SmolLM2 in process, its messages and the notifications it showed."""
    config = KvchatConfig(model=ModelConfig(n_ctx=1024, memory_budget=budget),
                          models=ModelsConfig(dirs=[str(d) for d in dirs]),
                          sampling=SamplingConfig(temperature=0.0, max_tokens=16),
                          ui={"stream_view": "markdown"})
    engine = LocalEngine(config.model, config.sampling, config.kv)
    app = KvchatApp(config, engine, Store(home / "kvchat.db"), route="chat",
                    pinned=PINNED, prefs_file=home / "ui-prefs.json")
    notes: list[str] = []
    shown = app.notify

    def notify(message: str, *args: Any, **kwargs: Any) -> None:
        notes.append(message)
        shown(message, *args, **kwargs)

    app.notify = notify  # type: ignore[method-assign]
    return app, [], notes


async def open_models(app: KvchatApp, seen: list[Message], pilot: Pilot[int]) -> ModelsScreen:
    await run_command(pilot, "Switch model")
    screen = app.screen
    assert isinstance(screen, ModelsScreen)
    await wait_for(seen, ModelsScreen.Listed, pilot)
    await pilot.pause()
    return screen


async def pick(screen: ModelsScreen, name: str, pilot: Pilot[int]) -> str:
    """Highlight model ``name``, press Enter; the row's text."""
    index = next(i for i, m in enumerate(screen.models) if m.name == name)
    options = screen.query_one("#models", OptionList)
    options.highlighted = index
    label = str(options.get_option_at_index(index).prompt)
    await pilot.press("enter")
    await pilot.pause(0.2)
    return label


async def test_switch_model_from_the_palette_and_the_conversation_goes_on(
        kvchat_home: Path, gemma_path: Path) -> None:
    app, seen, notes = switch_app(kvchat_home)
    async with app.run_test(size=(160, 48), message_hook=seen.append) as pilot:
        ready = await wait_for(seen, ModelReady, pilot)
        assert isinstance(ready, ModelReady)
        await pilot.press(*"What is the capital of France?", "enter")
        await wait_for(seen, ReplyFinished, pilot)
        conversation = app.conversation_id
        screen = await open_models(app, seen, pilot)
        current = str(screen.query_one("#models", OptionList).highlighted_option.prompt)
        assert current.startswith("▶ smollm2")
        label = await pick(screen, "gemma3-270m", pilot)
        assert "gemma3" in label and label.endswith("fits")
        switched = await wait_for(seen, ModelSwitched, pilot)
        assert isinstance(switched, ModelSwitched)
        await pilot.pause()
        info = switched.info
        assert info.path == str(gemma_path) and info.name != ready.info.name
        assert any(isinstance(m, ModelSwitching) for m in seen)
        status = app.query_one(StatusLine)
        assert status.model_name == info.name and status.state == "ready"
        assert status.ctx_total == 1024 and status.ctx_used == 0
        memory = app.query_one(MemoryPane)
        assert memory.view.info == info
        assert memory.view.measured is not None and memory.view.measured.stage == "loaded"
        kv = app.query_one(KVPane)
        assert kv.last is None and not kv.query_one(CellsChart).samples
        notices = [str(n.render()) for n in app.query(".notice")]
        assert any(n.startswith(f"model: {info.name}") for n in notices)

        after = len(seen)
        await pilot.press(*"And of Germany?", "enter")
        finished = await wait_for(seen, ReplyFinished, pilot, after=after)
        assert isinstance(finished, ReplyFinished)
        done = finished.done
        assert done.text.strip() and done.reused_tokens == 0
        assert done.evaluated_tokens == done.prompt_tokens
        assert app.conversation_id == conversation
        assert not [n for n in notes if "failed" in n.lower()]


async def test_unfitting_broken_and_mid_reply_switches_are_refused(
        kvchat_home: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "broken.gguf").write_bytes(b"GGUF" + (3).to_bytes(4, "little") + b"\0" * 64)
    unknown_architecture(models / "nonesuch.gguf")
    app, seen, notes = switch_app(kvchat_home, budget=SMALL_BUDGET, dirs=[models])
    asked: list[bool] = []

    def hook(message: Message) -> None:
        seen.append(message)
        if isinstance(message, ReplyStarted) and not asked:
            asked.append(app.replying)
            app.action_switch_model()

    async with app.run_test(size=(160, 48), message_hook=hook) as pilot:
        ready = await wait_for(seen, ModelReady, pilot)
        assert isinstance(ready, ModelReady)
        await pilot.press(*"What is the capital of France?", "enter")
        await wait_for(seen, ReplyFinished, pilot)
        await pilot.pause()
        assert asked == [True]
        assert "A reply is streaming: Esc cancels it, then switch." in notes
        assert not isinstance(app.screen, ModelsScreen)

        screen = await open_models(app, seen, pilot)
        label = await pick(screen, "gemma3-270m", pilot)
        assert label.startswith("✗ gemma3-270m") and label.endswith("does not fit")
        assert app.screen is screen  # refused: the list stays
        assert any(n.startswith("gemma3-270m does not fit: needs 0.62 GiB")
                   and "the budget is 0.44 GiB" in n for n in notes)
        label = await pick(screen, "broken", pilot)
        assert label.startswith("✗ broken") and label.endswith("broken")
        assert any(n.startswith("broken is broken: ") for n in notes)
        await pilot.press("escape")
        await pilot.pause()
        assert not any(isinstance(m, ModelSwitching) for m in seen)
        assert app.query_one(StatusLine).model_name == ready.info.name and app.ready

        # A file llama.cpp refuses: the previous model comes back, and the app goes on.
        screen = await open_models(app, seen, pilot)
        await pick(screen, "nonesuch", pilot)
        failed = await wait_for(seen, ModelSwitchFailed, pilot)
        assert isinstance(failed, ModelSwitchFailed) and failed.info is not None
        await pilot.pause()
        assert any(n.startswith("cannot load nonesuch.gguf: ")
                   and n.endswith(f"{ready.info.name} is loaded again") for n in notes)
        status = app.query_one(StatusLine)
        assert status.model_name == ready.info.name and status.state == "ready" and app.ready
        assert app.query_one(MemoryPane).view.info == failed.info
        after = len(seen)
        await pilot.press(*"What is the capital of Italy?", "enter")
        finished = await wait_for(seen, ReplyFinished, pilot, after=after)
        assert isinstance(finished, ReplyFinished) and "Rome" in finished.done.text
