"""The Textual app driven through its pilot, on the real model and a real store."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from typing import Literal

import pytest
from textual.message import Message
from textual.pilot import Pilot

from engine.backends.local import LocalEngine
from engine.backends.process.engine import ProcessEngine
from engine.config import (
    KvchatConfig,
    ModelConfig,
    SamplingConfig,
    SpeculativeConfig,
)
from engine.events import (
    Eviction,
    KVUsage,
    ModelLoaded,
    OutputCheck,
    SpecStats,
    TurnStarted,
)
from engine.store import Store
from tui.app import KvchatApp
from tui.coalesce import SOURCE_FRAME_S
from tui.config import UIConfig
from tui.messages import (
    EngineEvent,
    ModelFailed,
    ModelReady,
    PromptSubmitted,
    ReplyChunk,
    ReplyFailed,
    ReplyFinished,
    ReplyRetrying,
    ReplyStarted,
)
from tui.prefs import load_prefs
from tui.widgets.chat_pane import ReplyMessage, UserMessage
from tui.widgets.kv_pane import KVPane
from tui.widgets.memory_pane import MemoryPane
from tui.widgets.prompt_input import PromptInput
from tui.widgets.segment_bar import SegmentBar
from tui.widgets.source_stream import SourceStream
from tui.widgets.status_line import StatusLine

PINNED = ("max_tokens", "temperature")


def make_app(home: Path, max_tokens: int = 16, n_ctx: int = 1024, route: str | None = "chat",
             speculative: SpeculativeConfig | None = None,
             stream_view: Literal["markdown", "source"] = "markdown",
             ) -> tuple[KvchatApp, list[Message]]:
    """An app on the real model. ``route`` chat by default: the chat template leaves
    sampling alone, so replies stay short and tests quick. Replies stream as Markdown
    unless said otherwise, whatever the machine's cores (``auto`` depends on them)."""
    config = KvchatConfig(model=ModelConfig(n_ctx=n_ctx),
                          sampling=SamplingConfig(temperature=0.0, max_tokens=max_tokens),
                          ui={"stream_view": stream_view})
    engine = LocalEngine(config.model, config.sampling, config.kv, speculative)
    app = KvchatApp(config, engine, Store(home / "kvchat.db"), route=route, pinned=PINNED,
                    prefs_file=home / "ui-prefs.json")
    return app, []


async def wait_for(seen: list[Message], kind: type[Message], pilot: Pilot,
                   timeout: float = 120, after: int = 0) -> Message:
    async def poll() -> Message:
        while True:
            for message in seen[after:]:
                if isinstance(message, kind):
                    return message
            await pilot.pause(0.05)
    return await asyncio.wait_for(poll(), timeout)


def events_of(seen: list[Message], kind: type) -> list:
    """Engine events of ``kind`` the app was sent: alone, or as a frame's gauges."""
    found = []
    for m in seen:
        events = [m.event] if isinstance(m, EngineEvent) else \
            m.gauges if isinstance(m, ReplyChunk) else []
        found += [e for e in events if isinstance(e, kind)]
    return found


async def test_type_send_and_see_the_streamed_reply(kvchat_home: Path) -> None:
    app, seen = make_app(kvchat_home)
    shown_at_start: list[int] = []

    def hook(message: Message) -> None:
        seen.append(message)
        if isinstance(message, ReplyStarted):  # the engine has stored the prompt
            shown_at_start.append(len(app.query(UserMessage)) + len(app.query(ReplyMessage)))

    async with app.run_test(size=(120, 36), message_hook=hook) as pilot:
        await wait_for(seen, ModelReady, pilot)
        await pilot.click("#prompt")
        await pilot.press(*"Name a colour.")
        await pilot.press("enter")
        finished = await wait_for(seen, ReplyFinished, pilot)
        await pilot.pause()
        # The prompt and its reply were on screen before the engine started.
        assert shown_at_start == [2]
        chain = [type(m) for m in seen if isinstance(m, PromptSubmitted | ReplyStarted |
                                                        ReplyChunk | ReplyFinished)]
        assert chain[0] is PromptSubmitted and chain[1] is ReplyStarted
        assert chain[-1] is ReplyFinished and ReplyChunk in chain
        assert app.query_one(UserMessage).render().plain == "Name a colour."
        reply = app.query_one(ReplyMessage)
        assert reply.text == finished.done.text and reply.text.strip()
        # The streamed chunks add up to the reply: nothing lost in coalescing.
        assert "".join(m.text for m in seen if isinstance(m, ReplyChunk)) == reply.text
        note = reply.note
        assert note.startswith("route chat chosen · ")
        assert f"{finished.done.completion_tokens} tokens" in note and "tok/s" in note
        status = app.query_one(StatusLine)
        assert status.ctx_used > 0 and "Smollm2 135M" in status.render().plain
        assert status.route == "chat chosen" and "route chat" in str(status.tooltip)
        rows = app.store.messages(app.conversation_id)
        assert [r.role for r in rows] == ["user", "assistant"]
        assert rows[1].content == finished.done.text
        # The message box is empty again, and Up brings the sent message back.
        prompt = app.query_one(PromptInput)
        assert prompt.text == ""
        await pilot.press("up")
        assert prompt.text == "Name a colour."
        await pilot.press("down")
        assert prompt.text == ""
        # Ctrl+J adds a line instead of sending.
        await pilot.press("a", "ctrl+j", "b")
        assert prompt.text == "a\nb" and not app.replying
        # Ctrl+Y copies the last reply.
        await pilot.press("ctrl+y")
        assert app.clipboard == reply.text


@pytest.mark.parametrize("view", ["markdown", "source"])
async def test_every_frame_reaches_the_screen_while_a_reply_streams(
        kvchat_home: Path, view: Literal["markdown", "source"]) -> None:
    """A frame's text is painted by the screen's next update, not whenever something
    else (a key, the cursor blink) happens to wake the screen up: in Markdown after a
    layout, as source by repainting the rows it adds."""
    app, seen = make_app(kvchat_home, stream_view=view)
    paints: list[float] = []
    async with app.run_test(size=(120, 36), message_hook=seen.append) as pilot:
        await wait_for(seen, ModelReady, pilot)
        conversation = app.store.create_conversation("frames", None)
        app.post_message(ReplyStarted(TurnStarted(conversation_id=conversation,
                                                  user_message_id=0, reply_message_id=0),
                                      "Tell me about the printing press."))
        await wait_for(seen, ReplyStarted, pilot)
        await pilot.pause()
        assert not app.query_one(PromptInput).cursor_blink  # nothing else wakes the screen
        display = app._display

        def painted(screen: object, update: object) -> None:
            if update is not None:
                paints.append(time.perf_counter())
            display(screen, update)  # type: ignore[arg-type]

        app._display = painted  # type: ignore[method-assign]
        for i in range(8):
            before = len(paints)
            app.post_message(ReplyChunk(f"The press, part {i}.\n\n", 6))
            for _ in range(60):  # up to 3 s; the screen's next update is due within 0.1 s
                if len(paints) > before:
                    break
                await asyncio.sleep(0.05)
            assert len(paints) > before, f"frame {i} was not painted"
        assert "part 7." in app.query_one(ReplyMessage).text
        if view == "source":
            stream = app.query_one(SourceStream)
            assert any("part 7." in stream.render_line(y).text
                       for y in range(stream.size.height))


async def test_a_reply_streams_as_source_then_shows_as_markdown(kvchat_home: Path) -> None:
    """``ui.stream_view = "source"`` (what ``auto`` picks where decoding has every core):
    the real model's reply streams into a SourceStream, frames four a second, gauges
    once a second, the cursor still; when it ends, the same text is Markdown blocks."""
    app, _ = make_app(kvchat_home, max_tokens=300, stream_view="source")
    app.ignore_eos = True  # long enough to look at while it streams
    seen: list[Message] = []
    streams: list[str] = []
    blinks: list[bool] = []

    def hook(message: Message) -> None:
        # Looked at as each later frame, and the reply's end, comes in: the handlers
        # of the frames before have run by then, however fast the machine decodes.
        seen.append(message)
        if isinstance(message, ReplyChunk | ReplyFinished) and app.query(ReplyMessage):
            reply = app.query(ReplyMessage).last()
            streams.extend(stream.text for stream in reply.query(SourceStream)
                           if stream.text)
            blinks.append(app.query_one(PromptInput).cursor_blink)

    async with app.run_test(size=(120, 36), message_hook=hook) as pilot:
        await wait_for(seen, ModelReady, pilot)
        assert app.source_view
        await pilot.click("#prompt")
        await pilot.press(*"Tell me about the printing press.", "enter")
        finished = await wait_for(seen, ReplyFinished, pilot)
        await pilot.pause()
        reply = app.query_one(ReplyMessage)
        assert reply.source_view and streams
        assert reply.text.startswith(streams[0]) and streams[0]
        assert not reply.query(SourceStream)
        assert reply.text == finished.done.text
        assert "".join(b.source for b in reply.blocks) == reply.text
        # The cursor held still while the reply streamed, and blinks again.
        assert blinks and not any(blinks) and app.query_one(PromptInput).cursor_blink
        # Frames came no more often than SOURCE_FRAME_S while tokens came (and at the
        # reply's events that go out at once: the route, the end), the text adding up.
        chunks = [m for m in seen if isinstance(m, ReplyChunk)]
        assert "".join(m.text for m in chunks) == reply.text
        assert finished.done.decode_s is not None
        assert len(chunks) <= 4 + finished.done.decode_s / SOURCE_FRAME_S


async def test_escape_cancels_a_reply_in_flight(kvchat_home: Path) -> None:
    app, seen = make_app(kvchat_home, max_tokens=3000)
    async with app.run_test(size=(100, 30), message_hook=seen.append) as pilot:
        await wait_for(seen, ModelReady, pilot)
        app.post_message(PromptSubmitted("Write the longest story you can."))
        await wait_for(seen, ReplyChunk, pilot)
        await pilot.press("escape")
        finished = await wait_for(seen, ReplyFinished, pilot)
        assert finished.done.finish_reason in ("cancelled", "stop")
        assert finished.done.completion_tokens < 3000
        assert not app.replying
        await pilot.pause()
        if finished.done.finish_reason == "cancelled":
            assert "cancelled" in app.query_one(ReplyMessage).note
            assert app.store.messages(app.conversation_id)[1].status == "cancelled"


async def test_a_prompt_the_engine_refuses_goes_back_into_the_message_box(
        kvchat_home: Path) -> None:
    """Shown at once, but refused before it was stored (here: not valid UTF-8, as a
    paste of stray bytes can be): the prompt leaves the conversation and waits in the
    message box to be edited; the error says why."""
    app, seen = make_app(kvchat_home)
    async with app.run_test(size=(120, 36), message_hook=seen.append) as pilot:
        await wait_for(seen, ModelReady, pilot)
        bad = "Tell me about \udcff the press."
        app.post_message(PromptSubmitted(bad))
        failed = await wait_for(seen, ReplyFailed, pilot)
        await pilot.pause()
        assert failed.code == "prompt_not_utf8"
        assert not app.query(UserMessage) and not app.query(ReplyMessage)
        assert "not valid UTF-8" in str(app.query_one(".notice").render())
        assert app.query_one(PromptInput).text == bad and not app.replying
        assert app.store.list_conversations() == []
        # The next prompt goes through as usual.
        app.post_message(PromptSubmitted("Name a fruit."))
        await wait_for(seen, ReplyFinished, pilot)
        await pilot.pause()
        assert app.query_one(UserMessage).render().plain == "Name a fruit."


async def test_memory_pane_shows_the_load_and_the_cache(kvchat_home: Path) -> None:
    app, seen = make_app(kvchat_home, max_tokens=8)
    async with app.run_test(size=(160, 48), message_hook=seen.append) as pilot:
        ready = await wait_for(seen, ModelReady, pilot)
        await pilot.pause()
        # Before the first reply: the cache's shares listed at 0 B, its headline in the
        # shape it keeps while replies stream (no layout at their first tokens).
        legend = str(app.query_one("#mem-legend").render())
        assert "KV used 0 B" in legend and "KV reserved 0 B" in legend
        n_ctx = ready.info.n_ctx
        assert str(app.query_one("#kv-headline").render()).startswith(f"0/{n_ctx} cells")
        pane = app.query_one(MemoryPane)
        info = ready.info
        assert pane.view.info == info
        segments = dict(app.query_one("#mem-bar", SegmentBar).segments)
        weights = segments["weights-gpu"] + segments["weights-cpu"]
        assert weights == sum(v for k, v in info.buffers.items() if k.startswith("model "))
        layers = str(app.query_one("#mem-layers").render())
        assert f"layers {info.n_layers}: {info.n_gpu_layers} GPU" in layers
        if ready.memory:  # the local engine reports its plan: planned vs measured
            assert pane.view.planned is not None and pane.view.measured is not None
            label, planned, measured = pane.view.planned_vs_measured()[-1]
            assert label == "total" and planned == pane.view.planned.total_bytes
            assert measured == sum(pane.view.measured.buffers.values())
        assert segments["kv-used"] == 0
        app.post_message(PromptSubmitted("Say hello."))
        await wait_for(seen, ReplyFinished, pilot)
        await pilot.pause()
        kv = events_of(seen, KVUsage)[-1]
        segments = dict(app.query_one("#mem-bar", SegmentBar).segments)
        assert segments["kv-used"] == kv.used_bytes > 0
        headline = str(app.query_one("#mem-headline").render())
        assert "free" in headline and "of" in headline


async def test_kv_pane_charts_usage_and_logs_evictions(kvchat_home: Path) -> None:
    app, seen = make_app(kvchat_home, max_tokens=8, n_ctx=256)
    async with app.run_test(size=(160, 48), message_hook=seen.append) as pilot:
        await wait_for(seen, ModelReady, pilot)
        app.post_message(PromptSubmitted(" ".join(f"item{i}" for i in range(400))))
        finished = await wait_for(seen, ReplyFinished, pilot)
        await pilot.pause()
        evictions = events_of(seen, Eviction)
        usage = events_of(seen, KVUsage)
        assert finished.done.evictions >= 1 and evictions and usage
        pane = app.query_one(KVPane)
        log_lines = list(pane.query_one("#kv-log").lines)
        assert len(log_lines) == len(evictions)
        first = evictions[0]
        assert f"-{first.evicted_tokens} [{first.start},{first.end})" in log_lines[0]
        assert pane.query_one("#kv-chart").samples[-1] == (usage[-1].used_cells,
                                                            usage[-1].reserved_cells)
        headline = str(pane.query_one("#kv-headline").render())
        assert headline.startswith(f"{usage[-1].used_cells}/256 cells")
        assert f"evicted {usage[-1].evicted_total}" in headline
        # The note above the reply says the message was cut.
        notes = [str(w.render()) for w in app.query(".notice")]
        assert len(notes) == 1 and notes[0].startswith("note: the message is")


async def test_status_line_shows_speculation_live(kvchat_home: Path) -> None:
    app, seen = make_app(kvchat_home, max_tokens=48,
                         speculative=SpeculativeConfig(mode="prompt-lookup", adaptive=False))
    text = "one two three four five six seven eight nine ten"
    async with app.run_test(size=(120, 36), message_hook=seen.append) as pilot:
        await wait_for(seen, ModelReady, pilot)
        app.post_message(PromptSubmitted(f"Repeat this line three times: {text} {text}"))
        finished = await wait_for(seen, ReplyFinished, pilot)
        await pilot.pause()
        spec = events_of(seen, SpecStats)
        assert spec, "prompt lookup never drafted on a repetitive reply"
        status = app.query_one(StatusLine)
        assert status.spec.startswith("spec ") and f"{spec[-1].acceptance:.0%}" in status.spec
        if finished.done.drafted_tokens:
            assert "accepted" in app.query_one(ReplyMessage).note


async def test_a_retried_reply_shows_its_earlier_attempts(kvchat_home: Path) -> None:
    # The code route checks for a fenced block; this tiny model rarely writes one in
    # 12 tokens, so the retry ladder runs for real.
    app, seen = make_app(kvchat_home, max_tokens=12, route=None)
    async with app.run_test(size=(120, 40), message_hook=seen.append) as pilot:
        await wait_for(seen, ModelReady, pilot)
        app.post_message(PromptSubmitted("Write a python function that adds two numbers.",
                                         route="code"))
        finished = await wait_for(seen, ReplyFinished, pilot, timeout=300)
        await pilot.pause()
        done = finished.done
        reply = app.query_one(ReplyMessage)
        retries = [m.retry for m in seen if isinstance(m, ReplyRetrying)]
        checks = events_of(seen, OutputCheck)
        assert len(checks) == done.attempts and len(retries) == done.attempts - 1
        folded = reply.query(".attempt")
        assert len(folded) == done.attempts - 1
        assert reply.text == done.text
        if done.output_ok is False:
            assert f"failed after {done.attempts} attempts" in reply.note
        elif done.attempts > 1:
            assert f"retried {done.attempts - 1}×" in reply.note
        for widget, check in zip(folded, checks, strict=False):
            assert f"attempt {check.attempt} · " in str(widget.title)
            assert "malformed" in str(widget.title)
        stored = app.store.attempts(reply.message_id)
        assert [a.number for a in stored] == [c.attempt for c in checks]


async def test_pane_toggles_and_theme_are_remembered(kvchat_home: Path) -> None:
    app, seen = make_app(kvchat_home)
    async with app.run_test(size=(80, 24), message_hook=seen.append) as pilot:
        side = app.query_one("#side")
        assert not side.display  # small screen: the chat has the width
        await pilot.press("f3")
        assert side.display and app.query_one(KVPane).display
        await pilot.press("f2")
        assert not app.query_one(MemoryPane).display
        app.theme = "kvchat-light"
        await pilot.pause()
    prefs = load_prefs(kvchat_home / "ui-prefs.json")
    assert prefs.theme == "kvchat-light" and prefs.kv_pane and not prefs.memory_pane
    again, _ = make_app(kvchat_home)
    async with again.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        assert again.theme == "kvchat-light"
        assert again.query_one("#side").display
        assert not again.query_one(MemoryPane).display


class _BrokenEngine(LocalEngine):
    """The real engine, with a load that fails the way a bug would (not a KvchatError)."""

    async def start(self):  # type: ignore[no-untyped-def]
        raise RuntimeError("unexpected state")


async def test_a_load_that_dies_unexpectedly_is_reported_not_awaited(kvchat_home: Path) -> None:
    config = KvchatConfig(model=ModelConfig(n_ctx=512))
    app = KvchatApp(config, _BrokenEngine(config.model), Store(kvchat_home / "kvchat.db"),
                    prefs_file=kvchat_home / "ui-prefs.json")
    seen: list[Message] = []
    async with app.run_test(size=(120, 36), message_hook=seen.append) as pilot:
        failed = await wait_for(seen, ModelFailed, pilot, timeout=30)
        assert isinstance(failed, ModelFailed)
        assert "RuntimeError: unexpected state" in failed.message
        await pilot.pause()
        assert app.query_one(StatusLine).state == "model failed to load"
        assert not app.ready


async def test_the_engine_gets_the_interpreter_lock_back_sooner_while_the_app_runs(
        kvchat_home: Path) -> None:
    # ui_nice 0: this test must not lower the priority of pytest's own thread.
    config = KvchatConfig(model=ModelConfig(n_ctx=512), ui={"ui_nice": 0})
    app = KvchatApp(config, LocalEngine(config.model), Store(kvchat_home / "kvchat.db"),
                    prefs_file=kvchat_home / "ui-prefs.json", yield_cpu=True)
    before = sys.getswitchinterval()
    seen: list[Message] = []
    async with app.run_test(size=(120, 36), message_hook=seen.append) as pilot:
        await wait_for(seen, ModelReady, pilot)
        await pilot.pause()
        assert sys.getswitchinterval() == pytest.approx(UIConfig().gil_switch_ms / 1000)
    assert sys.getswitchinterval() == before  # a process-wide setting: given back


async def test_the_app_on_an_engine_process_streams_and_outlives_its_crash(
        kvchat_home: Path) -> None:
    """What ``kvchat`` runs: the model in a child process. Its crash costs one reply;
    the app, its conversation and the next reply go on."""
    # Replies long enough that the kill lands while one streams: the engine process
    # hands events over in bursts (RELAY_GAP_S), so the first frame comes a little later.
    config = KvchatConfig(model=ModelConfig(n_ctx=1024), ui={"ui_nice": 0},
                          sampling=SamplingConfig(temperature=0.0, max_tokens=160))
    engine = ProcessEngine(config.model, config.sampling, config.kv)
    app = KvchatApp(config, engine, Store(kvchat_home / "kvchat.db"), route="chat",
                    pinned=PINNED, prefs_file=kvchat_home / "ui-prefs.json", yield_cpu=True)
    before = sys.getswitchinterval()
    seen: list[Message] = []
    async with app.run_test(size=(120, 36), message_hook=seen.append) as pilot:
        await wait_for(seen, ModelReady, pilot)
        await pilot.pause()
        # The token loop has an interpreter of its own: no lock to hand over.
        assert sys.getswitchinterval() == before
        pane = app.query_one(MemoryPane).view
        assert pane.planned is not None and pane.measured is not None
        app.post_message(PromptSubmitted("Name a colour."))
        finished = await wait_for(seen, ReplyFinished, pilot)
        assert finished.done.completion_tokens > 0
        assert app.query_one(ReplyMessage).text == finished.done.text
        assert events_of(seen, KVUsage)  # the panes hear the child's events

        app.post_message(PromptSubmitted("Write the longest story you can."))
        mark = len(seen)
        await wait_for(seen, ReplyChunk, pilot, after=mark)
        assert engine.pid is not None
        os.kill(engine.pid, signal.SIGKILL)
        failed = await wait_for(seen, ReplyFailed, pilot, after=mark)
        assert failed.code == "engine_died" and "SIGKILL" in failed.message
        await pilot.pause()
        assert not app.replying and "error: the engine process was killed" in \
            app.query(ReplyMessage).last().note
        status = app.query_one(StatusLine)
        assert status.state == "engine stopped: the next message reloads it"

        mark = len(seen)
        app.post_message(PromptSubmitted("Name a fruit."))
        await pilot.pause()
        assert status.state == "loading the model again…"
        await wait_for(seen, ReplyChunk, pilot, after=mark)
        assert status.state == "generating…"  # the new load's event came first
        again = await wait_for(seen, ReplyFinished, pilot, after=mark)
        assert again.done.completion_tokens > 0 and engine.starts == 2
        reloaded = events_of(seen, ModelLoaded)
        assert len(reloaded) == 1 and app.query_one(MemoryPane).view.info == reloaded[0]
        roles = [r.role for r in app.store.messages(app.conversation_id)]
        assert roles == ["user", "assistant"] * 3


def test_the_app_spares_a_core_only_on_a_cpu_of_many() -> None:
    from tui.ui_priority import SPARE_CORE_FROM, spare_a_core

    # A few cores: every one decodes (the last is a large share of the speed).
    assert spare_a_core(KvchatConfig(), cores=2) == KvchatConfig()
    assert spare_a_core(KvchatConfig(), cores=SPARE_CORE_FROM - 1) == KvchatConfig()
    # Many: one-token decodes and verification batches leave the screen a core, prompts
    # still use every core.
    many = spare_a_core(KvchatConfig(), cores=16).model
    assert (many.n_threads, many.n_threads_batch, many.n_threads_verify) == (15, 16, 15)
    chosen = KvchatConfig(model=ModelConfig(n_threads=1))
    assert spare_a_core(chosen, cores=16) == chosen  # the user's thread count stands
    off = KvchatConfig(ui={"spare_core": False})
    assert spare_a_core(off, cores=16) == off
