"""Layout snapshots. A scripted stand-in engine replays fixed events so the pictures
are stable; every engine behaviour is tested against the real model elsewhere."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from engine.api import ChatEngine
from engine.chat_format import ChatMessage
from engine.config import KvchatConfig, SamplingConfig, UIConfig
from engine.events import Done, Event, KVUsage, ModelLoaded, TokenChunk
from engine.store import Store
from tui.app import KvchatApp
from tui.messages import PromptSubmitted

REPLY = ["Here is one:\n\n", "```python\n", "def add(a: int, b: int) -> int:\n",
         "    return a + b\n", "```\n\n", "It returns the **sum**."]
INFO = ModelLoaded(ts=0, path="/models/scripted.gguf", name="Scripted 1B", architecture="llama",
                   description="scripted", n_params=10**9, file_bytes=1, weights_bytes=1,
                   n_vocab=32000, n_ctx=4096, n_ctx_train=8192, n_layers=16, n_gpu_layers=0,
                   backend="CPU", devices=["CPU"], chat_format="chatml", kv_bytes=1, load_s=0.1)


class ScriptedEngine(ChatEngine):
    @property
    def info(self) -> ModelLoaded | None:
        return INFO

    async def start(self) -> ModelLoaded:
        return INFO

    async def chat(self, messages: Sequence[ChatMessage], sampling: SamplingConfig | None = None,
                   *, ignore_eos: bool = False, reserve: int | None = None,
                   ) -> AsyncIterator[Event]:
        for i, piece in enumerate(REPLY):
            yield TokenChunk(ts=0, text=piece, token_ids=[i])
        yield KVUsage(ts=0, used_cells=61, reserved_cells=0, n_ctx=4096, bytes_per_cell=2,
                      used_bytes=122, total_bytes=8192)
        yield Done(ts=0, finish_reason="stop", prompt_tokens=40, reused_tokens=0,
                   evaluated_tokens=40, completion_tokens=len(REPLY), ttft_s=0.05,
                   prefill_tokens_per_s=800.0, tokens_per_s=42.0, total_s=0.2,
                   text="".join(REPLY))

    def cancel(self) -> None:
        pass

    async def close(self) -> None:
        pass


@pytest.mark.parametrize("theme", ["kvchat-dark", "kvchat-light", "kvchat-high-contrast"])
@pytest.mark.parametrize("size", [(80, 24), (160, 48)])
def test_chat_layout(snap_compare, tmp_path: Path, theme: str, size: tuple[int, int]) -> None:
    config = KvchatConfig(ui=UIConfig(theme=theme))
    app = KvchatApp(config, ScriptedEngine(), Store(tmp_path / "kvchat.db"))

    async def send(pilot) -> None:
        await pilot.pause()
        app.post_message(PromptSubmitted("Write an add function in Python."))
        for _ in range(50):
            await pilot.pause(0.05)
            if not app.replying:
                break
        await pilot.pause(0.2)

    assert snap_compare(app, terminal_size=size, run_before=send)
