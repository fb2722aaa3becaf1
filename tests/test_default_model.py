"""The model kvchat runs when none is configured chats: it answers, ends its turn with
its own end-of-turn token, and a second turn evaluates only what is new."""

from __future__ import annotations

from pathlib import Path

from textual.message import Message

from engine.api import ChatMessage
from engine.backends.factory import make_engine
from engine.backends.local import LocalEngine
from engine.config import KvchatConfig, ModelConfig, SamplingConfig
from engine.decode.generator import Generator
from engine.events import Done, PromptEvaluated
from engine.store import Store
from tests.conftest import chat_request
from tests.test_tui import wait_for
from tui.app import KvchatApp
from tui.messages import ModelReady, ReplyFinished
from tui.widgets.chat_pane import ReplyMessage

SAMPLING = SamplingConfig(temperature=0.0, max_tokens=96, seed=0)


def cached_tail(gen: Generator) -> tuple[list[int], int, str]:
    """The tokens the cache holds, the id of ``<|im_end|>``, and the cached text."""
    lm = gen.lm
    tokens = list(gen.cache.state.rendered_tokens)
    (im_end,) = lm.tokenize("<|im_end|>", add_bos=False)
    return tokens, im_end, gen.cache.state.rendered_text


async def test_two_turns_use_the_template_and_evaluate_only_the_new_turn() -> None:
    eng = LocalEngine(ModelConfig(n_ctx=2048), SAMPLING)
    await eng.start()
    try:
        # The conversation as a session sends it: the configured system prompt first.
        system = ChatMessage(role="system", content=KvchatConfig().chat.system_prompt)
        first = [system, ChatMessage(role="user", content="What is the capital of France?")]
        events = [e async for e in eng.chat(chat_request(first))]
        done = events[-1]
        assert isinstance(done, Done) and done.finish_reason == "stop", done
        assert "Paris" in done.text
        tokens, im_end, text = await eng.run_on_engine_thread(cached_tail)
        # "stop": the model sampled its own end of turn, which is not decoded into the
        # cache (the next turn's rendering writes it as the template does).
        assert tokens[-1] != im_end and text.endswith(done.text)
        assert text.count("<|im_start|>") == 3  # system, user, assistant
        assert text.startswith(f"<|im_start|>system\n{system.content}<|im_end|>\n")

        second = [*first, ChatMessage(role="assistant", content=done.text),
                  ChatMessage(role="user", content="And of Italy?")]
        events = [e async for e in eng.chat(chat_request(second))]
        prompt = next(e for e in events if isinstance(e, PromptEvaluated))
        again = events[-1]
        assert isinstance(again, Done) and again.finish_reason == "stop", again
        assert "Rome" in again.text
        # Everything of turn 1 (prompt, reply and its end-of-turn) is reused; only the
        # new user turn and the assistant header are evaluated.
        assert prompt.reused_tokens == len(tokens)
        assert prompt.evaluated_tokens == prompt.prompt_tokens - len(tokens)
        _, _, text = await eng.run_on_engine_thread(cached_tail)
        assert (f"{done.text}<|im_end|>\n<|im_start|>user\nAnd of Italy?<|im_end|>\n"
                "<|im_start|>assistant\n") in text
    finally:
        await eng.close()


async def test_a_new_user_asks_and_the_app_answers(kvchat_home: Path) -> None:
    """The app as `kvchat` starts it with no config: the default model, in its own
    engine process, the router choosing the template."""
    config = KvchatConfig(sampling=SAMPLING)
    engine = make_engine(config, own_process=True)
    app = KvchatApp(config, engine, Store(kvchat_home / "kvchat.db"),
                    prefs_file=kvchat_home / "ui-prefs.json")
    seen: list[Message] = []
    async with app.run_test(size=(120, 36), message_hook=seen.append) as pilot:
        ready = await wait_for(seen, ModelReady, pilot)
        assert isinstance(ready, ModelReady) and ready.info.architecture == "llama"
        await pilot.click("#prompt")
        await pilot.press(*"What is the capital of France?")
        await pilot.press("enter")
        finished = await wait_for(seen, ReplyFinished, pilot)
        await pilot.pause()
        assert isinstance(finished, ReplyFinished)
        assert finished.done.finish_reason == "stop"
        reply = app.query_one(ReplyMessage)
        assert "Paris" in reply.text
