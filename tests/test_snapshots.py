"""Layout snapshots. A scripted stand-in engine replays fixed events so the pictures
are stable; every engine behaviour is tested against the real model elsewhere."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine.api import ChatEngine, ChatRequest
from engine.config import KvchatConfig
from engine.events import (
    Done,
    Event,
    Eviction,
    KVUsage,
    MemorySnapshot,
    ModelLoaded,
    Progress,
    SpecStats,
    TokenChunk,
    TurnStarted,
)
from engine.store import Store
from tests.test_tui_screens import store_retried_reply
from tui.app import KvchatApp
from tui.messages import PromptSubmitted, ReplyChunk, ReplyStarted
from tui.widgets.status_line import StatusLine

THEMES = ["kvchat-dark", "kvchat-light", "kvchat-high-contrast"]
SIZES = [(80, 24), (160, 48)]
T0 = 1_700_000_000.0
MiB = 1024 * 1024
REPLY = ["Here is one:\n\n", "```python\n", "def add(a: int, b: int) -> int:\n",
         "    return a + b\n", "```\n\n", "It returns the **sum**."]
BUFFERS = {"model CUDA0": 3900 * MiB, "model CPU_Mapped": 420 * MiB, "KV CUDA0": 512 * MiB,
           "compute CUDA0": 300 * MiB, "compute CUDA_Host": 24 * MiB}
INFO = ModelLoaded(ts=T0, path="/models/scripted.gguf", name="Scripted 7B",
                   architecture="llama", description="scripted", n_params=7 * 10**9,
                   file_bytes=1, weights_bytes=1, n_vocab=32000, n_ctx=4096, n_ctx_train=8192,
                   n_layers=32, n_gpu_layers=28, gpu_layers=list(range(28)), backend="CUDA",
                   devices=["CUDA0"], chat_format="chatml", kv_bytes=512 * MiB,
                   buffers=BUFFERS, load_s=0.1)


def snapshot(stage: str, buffers: dict[str, int]) -> MemorySnapshot:
    return MemorySnapshot(ts=T0, stage=stage, pool="gpu", device="CUDA0",
                          budget_bytes=6 * 1024 * MiB, n_layers=32, n_gpu_layers=28,
                          buffers=buffers, total_bytes=sum(buffers.values()),
                          planned_total_bytes=sum(BUFFERS.values()), kv_bytes=512 * MiB)


def kv(used: int, reserved: int, evicted: int = 0) -> KVUsage:
    return KVUsage(ts=T0, used_cells=used, reserved_cells=reserved, n_ctx=4096,
                   bytes_per_cell=128 * 1024, used_bytes=used * 128 * 1024,
                   total_bytes=512 * MiB, kept_cells=24, evicted_total=evicted)


class ScriptedEngine(ChatEngine):
    @property
    def info(self) -> ModelLoaded | None:
        return INFO

    @property
    def memory(self) -> list[MemorySnapshot]:
        measured = {**BUFFERS, "compute CUDA0": 310 * MiB}
        return [snapshot("planned", BUFFERS), snapshot("loaded", measured)]

    async def start(self) -> ModelLoaded:
        return INFO

    async def chat(self, request: ChatRequest) -> AsyncIterator[Event]:
        for step in range(24):  # a long conversation's cache, filling and sliding
            used = 600 + step * 150 - (1800 if step >= 16 else 0)
            yield kv(used, 1024 - step * 30, 1800 if step >= 16 else 0)
        yield Eviction(ts=T0, reason="generation", evicted_tokens=1800, start=24, end=1824,
                       kept_tokens=24, shifted_tokens=2100, at_turn_boundary=True,
                       used_before=3900, used_after=2100, elapsed_s=0.0008, shift_s=0.0312,
                       shift_tokens=1, evicted_total=1800)
        for i, piece in enumerate(REPLY):
            yield TokenChunk(ts=T0, text=piece, token_ids=[i])
        yield Progress(ts=T0, completion_tokens=6, tokens_per_s=42.0)
        yield SpecStats(ts=T0, drafter="prompt-lookup", active=True, rounds=3, drafted=12,
                        accepted=9, acceptance=0.75, running_acceptance=0.7, draft_len=6,
                        plain_s_per_token=0.02, spec_s_per_token=0.012, speedup=1.67)
        yield Done(ts=T0, finish_reason="stop", prompt_tokens=40, reused_tokens=0,
                   evaluated_tokens=40, completion_tokens=len(REPLY), ttft_s=0.05,
                   prefill_tokens_per_s=800.0, tokens_per_s=42.0, total_s=0.2,
                   drafted_tokens=12, accepted_tokens=9, evictions=1, evicted_tokens=1800,
                   text="".join(REPLY))

    def cancel(self) -> None:
        pass

    async def close(self) -> None:
        pass


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> None:
    """Event times print in local time; the pictures need one zone."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()


def scripted_app(tmp_path: Path, theme: str) -> KvchatApp:
    return KvchatApp(KvchatConfig(ui={"theme": theme}), ScriptedEngine(),
                     Store(tmp_path / "kvchat.db"), prefs_file=tmp_path / "ui-prefs.json")


async def send_one(pilot) -> None:
    app = pilot.app
    await pilot.pause()
    # A blinking cursor is drawn or not depending on when the picture is taken.
    app.query_one("#prompt").cursor_blink = False
    app.post_message(PromptSubmitted("Write an add function in Python."))
    prompt = app.query_one("#prompt")
    # On a loaded machine the reply's end and the focus coming back to the message box
    # (which draws its cursor) can take seconds: wait for both, not for a fixed time.
    for _ in range(200):
        await pilot.pause(0.05)
        if not app.replying and app.focused is prompt:
            break
    assert not app.replying and app.focused is prompt
    await pilot.pause(0.3)


@pytest.mark.parametrize("theme", THEMES)
@pytest.mark.parametrize("size", SIZES)
def test_main_layout(snap_compare, tmp_path: Path, theme: str, size: tuple[int, int]) -> None:
    assert snap_compare(scripted_app(tmp_path, theme), terminal_size=size, run_before=send_one)


@pytest.mark.parametrize("keys", [("f3",), ("f2",)], ids=["kv", "memory"])
def test_small_screen_with_one_pane(snap_compare, tmp_path: Path, keys: tuple[str]) -> None:
    async def run_before(pilot) -> None:
        await send_one(pilot)
        await pilot.press(*keys)
        # Only the asked-for pane: the other one is switched off.
        await pilot.press("f2" if keys == ("f3",) else "f3")
        await pilot.pause(0.2)

    assert snap_compare(scripted_app(tmp_path, "kvchat-dark"), terminal_size=(80, 24),
                        run_before=run_before)


@pytest.mark.parametrize("size", SIZES)
def test_retry_screen(snap_compare, tmp_path: Path, size: tuple[int, int]) -> None:
    app = scripted_app(tmp_path, "kvchat-dark")
    store_retried_reply(app.store)

    async def run_before(pilot) -> None:
        await pilot.pause()
        await pilot.press("ctrl+r")
        await pilot.pause(0.3)

    assert snap_compare(app, terminal_size=size, run_before=run_before)


def test_a_reply_streaming_as_source(snap_compare, tmp_path: Path) -> None:
    """Mid-stream with ``ui.stream_view = "source"``: the reply so far as highlighted
    Markdown source (rendered as Markdown once it ends: test_source_view.py)."""
    app = KvchatApp(KvchatConfig(ui={"theme": "kvchat-dark", "stream_view": "source"}),
                    ScriptedEngine(), Store(tmp_path / "kvchat.db"),
                    prefs_file=tmp_path / "ui-prefs.json")

    async def run_before(pilot) -> None:
        await pilot.pause()
        conversation = app.store.create_conversation("streaming", None)
        app.post_message(ReplyStarted(TurnStarted(conversation_id=conversation,
                                                  user_message_id=0, reply_message_id=0),
                                      "Write an add function in Python."))
        await pilot.pause(0.2)
        app.query_one(StatusLine).state = "generating…"
        for i, piece in enumerate([*REPLY, "\n\n## Why\n\n- typed\n- ", "short"]):
            app.post_message(ReplyChunk(piece, 1))
            await pilot.pause(0.05 if i % 3 else 0.15)
        await pilot.pause(0.3)

    assert snap_compare(app, terminal_size=(160, 48), run_before=run_before)
