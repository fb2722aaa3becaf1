"""A reply streamed as highlighted source (``ui.stream_view``), then rendered as Markdown.

Widget-level: the chunks come from a script, as the reply worker would post them; the
app-level run on the real model is in test_tui.py."""

from __future__ import annotations

import asyncio
import re

from textual.app import App, ComposeResult
from textual.pilot import Pilot
from textual.strip import Strip

from engine.config import KvchatConfig, ModelConfig
from engine.events import ModelLoaded, Retry
from tests.test_tui_blocks import block_types, chunks_of, long_reply
from tui.ui_priority import streams_as_source
from tui.widgets.chat_pane import ChatPane, ReplyMessage
from tui.widgets.reply_blocks import split_blocks
from tui.widgets.source_stream import _PROSE, SourceStream, highlight_line, lexed_line

PARAGRAPH = re.compile(r"Paragraph \d+")


class ChatApp(App[None]):
    CSS_PATH = "../tui/app.tcss"

    def compose(self) -> ComposeResult:
        yield ChatPane(id="chat")


async def streamed_source(pane: ChatPane, text: str, seed: int) -> ReplyMessage:
    """A reply streamed as source into an anchored pane, in the chunks of ``seed``."""
    reply = await pane.add_reply(source_view=True)
    pane.anchor()
    for chunk in chunks_of(text, seed=seed):
        await reply.append(chunk)
    return reply


async def prepared_source(pane: ChatPane, pilot: Pilot[None]) -> ReplyMessage:
    """A prompt, then a reply to stream as source, prepared once laid out as the app
    prepares it (before its tokens)."""
    await pane.add_user("Tell me about the press.")
    reply = await pane.add_reply(source_view=True)
    pane.anchor()
    await pilot.pause()
    reply.prepare()
    await pilot.pause()
    return reply


def plain_rows(stream: SourceStream) -> list[str]:
    return [stream.render_line(y).text.rstrip() for y in range(stream.size.height)]


def styles_of(strip: Strip) -> set[object]:
    return {segment.style for segment in strip if segment.text.strip()}


async def test_split_blocks_cuts_where_the_markdown_stream_cuts() -> None:
    """What a reply streamed as source becomes at its end is what streaming it as
    Markdown makes: the same blocks."""
    text = long_reply(10)
    app = ChatApp()
    async with app.run_test(size=(100, 30)) as pilot:
        reply = await app.query_one(ChatPane).add_reply()
        for chunk in chunks_of(text, seed=3):
            await reply.append(chunk)
        await reply.finish("done")
        await pilot.pause()
        streamed = [b.source for b in reply.blocks]
    assert len(streamed) > 2 and split_blocks(text) == streamed
    assert split_blocks("") == [""]


async def test_a_source_stream_shows_the_text_highlighted_then_markdown() -> None:
    text = long_reply(6)
    app = ChatApp()
    async with app.run_test(size=(100, 30)) as pilot:
        pane = app.query_one(ChatPane)
        reply = await streamed_source(pane, text, seed=2)
        await pilot.pause()
        # While streaming: one SourceStream, no Markdown rendered yet.
        stream = reply.query_one(SourceStream)
        assert [b.source for b in reply.blocks] == [""]
        rows = [r for r in plain_rows(stream) if r]
        assert rows == [line.rstrip() for line in text.splitlines() if line.strip()]
        # A code line is coloured token by token; the fence's language is used.
        code = next(y for y in range(stream.size.height)
                    if stream.render_line(y).text.startswith("def part_0"))
        assert len(styles_of(stream.render_line(code))) > 2
        # A heading is set apart from prose, as Pygments' Markdown lexer sees it.
        rows = plain_rows(stream)
        heading, prose = rows.index("## Part 1"), rows.index("Some prose about part 1, "
                                                             "**bold** and `code`.")
        assert styles_of(stream.render_line(heading)).isdisjoint(
            styles_of(stream.render_line(prose)))
        # Blank rows reserved below the text: frames add rows without a layout.
        shown = plain_rows(stream)
        assert shown[-4:] == ["", "", "", ""]
        await reply.finish("done")
        await pilot.pause()
        assert not reply.query(SourceStream)
        blocks = reply.blocks
        assert len(blocks) > 1 and "".join(b.source for b in blocks) == text
        assert [t for b in blocks for t in block_types(b.source)] == block_types(text)
        # No blank rows left below the Markdown: the end of the reply is in view.
        assert reply.styles.min_height is None
        assert reply.size.height == sum(c.outer_size.height for c in reply.children
                                        if c.display)
        assert pane.scroll_y == pane.max_scroll_y
        shown = "".join(strip.text for strip in app.screen._compositor.render_strips())
        assert "done" in shown  # the stats line, right below the text


async def test_a_long_reply_goes_in_as_markdown_a_few_blocks_at_a_time() -> None:
    text = long_reply(14)
    app = ChatApp()
    async with app.run_test(size=(100, 30)) as pilot:
        reply = await streamed_source(app.query_one(ChatPane), text, seed=4)
        await pilot.pause()
        finishing = asyncio.create_task(reply.finish("done"))
        halfway = []  # Markdown above what is still source, the source shrinking
        while not finishing.done():
            streams = reply.query(SourceStream)
            if streams and len(reply.blocks) > 1:
                halfway.append((len(reply.blocks), len(streams.first().text)))
            await asyncio.sleep(0.02)
        await finishing
        assert len(halfway) >= 2 and halfway[0][1] > halfway[-1][1]
        assert not reply.query(SourceStream)
        assert "".join(b.source for b in reply.blocks) == text


async def test_a_source_stream_adds_rows_within_its_reserve_without_layouts() -> None:
    text = "".join(f"Paragraph {i} about the press and its type.\n\n" for i in range(120))
    app = ChatApp()
    async with app.run_test(size=(100, 30)) as pilot:
        pane = app.query_one(ChatPane)
        await pane.add_user("Tell me about the press.")
        reply = await pane.add_reply(source_view=True)
        pane.anchor()
        frames, growths = 0, 0
        last = None
        for i in range(0, len(text), 60):
            await reply.append(text[i:i + 60])
            await pilot.pause()
            stream = reply.query_one(SourceStream)
            frames += 1
            growths += stream.size.height != last
            last = stream.size.height
            # The newest text is on screen.
            shown = app.screen._compositor.render_strips()
            newest = reply.text.rstrip().rsplit("\n", 1)[-1].strip()
            assert any(newest in strip.text for strip in shown)
        # The stream grew (a layout, and a scroll of the pane) a few times only.
        assert frames > 80 and growths < frames / 5


async def test_a_prepared_reply_streams_in_a_window_that_turns_its_page() -> None:
    """Prepared before its tokens, a reply's source keeps the pane's free rows as its
    height: no frame lays the screen out or scrolls the pane, however long the reply;
    the window turns its page instead, the newest text always in view. Scrolling up
    shows every row again, the view staying where it was."""
    text = "".join(f"Paragraph {i} about the press and its type.\n\n" for i in range(120))
    app = ChatApp()
    async with app.run_test(size=(100, 30)) as pilot:
        pane = app.query_one(ChatPane)
        reply = await prepared_source(pane, pilot)
        stream = reply.query_one(SourceStream)
        # The conversation fills the pane exactly: nothing to scroll yet.
        assert stream.window == stream.size.height > pane.size.height // 2
        assert pane.max_scroll_y == 0
        layouts, pages = 0, 0
        original = stream.refresh

        def counted(*regions, **kwargs):  # type: ignore[no-untyped-def]
            nonlocal layouts
            layouts += bool(kwargs.get("layout"))
            return original(*regions, **kwargs)

        stream.refresh = counted  # type: ignore[method-assign]
        tops = []
        for i in range(0, len(text), 60):
            await reply.append(text[i:i + 60])
            await pilot.pause()
            tops.append(stream._top)
            shown = app.screen._compositor.render_strips()
            newest = reply.text.rstrip().rsplit("\n", 1)[-1].strip()
            assert any(newest in strip.text for strip in shown)
        pages = len(set(tops)) - 1
        assert layouts == 0 and pane.max_scroll_y == 0 and pages > 5
        # Each page keeps a quarter of the window of the text before it.
        window = stream.window
        rows = plain_rows(stream)
        assert rows[window // 4 - 1] and not rows[-1]
        # The user scrolls up: every row is there again, and what was shown stays put.
        top_text = rows[0]
        stream.refresh = original  # type: ignore[method-assign]
        pane.focus()
        await pilot.press("up")
        await pilot.pause()
        await pilot.pause()
        assert not stream.window and stream.size.height > 240
        assert reply.query_one(SourceStream).render_line(0).text.startswith("Paragraph 0 ")
        on_screen = [strip.text.strip() for strip in app.screen._compositor.render_strips()]
        assert any(top_text in line for line in on_screen)
        await reply.finish("done")
        await pilot.pause()
        assert "".join(b.source for b in reply.blocks) == text


async def test_a_reader_scrolled_up_keeps_their_place_when_the_reply_settles() -> None:
    """The reply ends while the user reads higher up: the source turns into Markdown,
    which takes other heights (headings, fences), and the pane's blank reserve goes;
    what the reader was looking at stays at the top of their view."""
    text = "".join(f"## Part {i}\n\nParagraph {i} of the press.\n\n"
                   f"```python\nprint({i})\n```\n\n" for i in range(40))
    app = ChatApp()
    async with app.run_test(size=(100, 30)) as pilot:
        pane = app.query_one(ChatPane)
        reply = await prepared_source(pane, pilot)
        for chunk in chunks_of(text, seed=5):
            await reply.append(chunk)
        await pilot.pause()
        pane.focus()
        for _ in range(3):
            await pilot.press("pageup")
        await pilot.pause()
        for _ in range(3):
            await pilot.press("up")
        await pilot.pause()

        def top_line() -> str:
            """The first paragraph in view."""
            rows = [strip.text for strip in app.screen._compositor.render_strips()]
            return next(m.group() for row in rows if (m := PARAGRAPH.search(row)))

        reading = top_line()
        assert reading != "Paragraph 39"  # well above the end
        await reply.finish("done")
        for _ in range(6):
            await pilot.pause(0.05)
        assert not reply.query_children(SourceStream)
        assert top_line() == reading
        assert pane.scroll_y < pane.max_scroll_y


def test_prose_skips_the_lexer_and_looks_the_same() -> None:
    """Lines none of Pygments' Markdown rules would mark up are not lexed at all (most
    of a reply), with the very same result; lines with markup still are."""
    prose = ["The printing press was invented around 1440, and it changed Europe.",
             "A question? Yes: (one) 'two' \"three\" 50% $5 a+b=c <b> x-y 1.5", "",
             "1.5 is a number, >not a quote", "-dash at the start"]
    markup = ["- a list item", "  1. numbered", "> a quote", "some *emphasis*",
              "snake_case", "`code`", "~~gone~~", "@someone", "# Heading", "[a](b)",
              "back\\slash"]
    for line in prose + markup:
        fast, lexed = highlight_line(line, "markdown"), lexed_line(line, "markdown")
        assert (fast.plain, list(fast.spans)) == (lexed.plain, list(lexed.spans))
    assert all(_PROSE.match(line) for line in prose)
    assert not any(_PROSE.match(line) for line in markup)
    assert all(lexed_line(line, "markdown").spans for line in markup[:4])


async def test_a_source_stream_rewraps_on_resize_and_recolours_on_a_new_theme() -> None:
    line = "word " * 60
    app = ChatApp()
    async with app.run_test(size=(100, 30)) as pilot:
        reply = await app.query_one(ChatPane).add_reply(source_view=True)
        await reply.append(f"# Title\n\n{line}\n")
        await pilot.pause()
        stream = reply.query_one(SourceStream)
        wide = [r for r in plain_rows(stream) if r]
        await pilot.resize_terminal(60, 30)
        await pilot.pause()
        narrow = [r for r in plain_rows(stream) if r]
        assert len(narrow) > len(wide)
        assert all(len(r) <= stream.size.width for r in narrow)
        assert " ".join(" ".join(narrow[1:]).split()) == line.strip()
        title = styles_of(stream.render_line(0))
        app.theme = "textual-light" if app.theme != "textual-light" else "textual-dark"
        await pilot.pause()
        assert styles_of(stream.render_line(0)) != title


async def test_a_retry_in_source_view_drops_the_attempt_shown() -> None:
    app = ChatApp()
    async with app.run_test(size=(100, 30)) as pilot:
        reply = await app.query_one(ChatPane).add_reply(source_view=True)
        await reply.append("Here is the data: {oops")
        await reply.start_attempt(Retry(attempt=2, strategy="grammar", reason="bad JSON"))
        assert not reply.query(SourceStream)
        await reply.append('{"ok": true}')
        await pilot.pause()
        await pilot.pause()
        # The new attempt streams in a window too, as the first did once prepared.
        assert reply.query_one(SourceStream).window > 0
        await reply.finish("done")
        await pilot.pause()
        assert [b.source for b in reply.blocks] == ['{"ok": true}']
        assert len(reply.query(".attempt")) == 1 and isinstance(reply, ReplyMessage)


def loaded(backend: str = "CPU", gpu_layers: int | None = 0) -> ModelLoaded:
    return ModelLoaded(path="m.gguf", name="m", architecture="gemma3", description="",
                       n_params=None, file_bytes=None, weights_bytes=None, n_vocab=None,
                       n_ctx=512, n_ctx_train=None, n_layers=None,
                       n_gpu_layers=gpu_layers, backend=backend, chat_format="gemma",
                       kv_bytes=0, load_s=0.0)


def test_replies_stream_as_source_where_decoding_has_every_core() -> None:
    auto = KvchatConfig()
    assert streams_as_source(auto, loaded(), cores=2)
    assert streams_as_source(auto, loaded(), cores=7)
    # A core left to the screen (the app's config on 8 or more), a GPU, a server.
    spared = KvchatConfig(model=ModelConfig(n_threads=15))
    assert not streams_as_source(spared, loaded(), cores=16)
    assert streams_as_source(KvchatConfig(model=ModelConfig(n_threads=16)), loaded(), cores=16)
    assert not streams_as_source(auto, loaded("CUDA", 18), cores=2)
    assert not streams_as_source(auto, loaded("openai:127.0.0.1:8080", None), cores=2)
    # Said in the config, whatever the machine.
    assert streams_as_source(KvchatConfig(ui={"stream_view": "source"}),
                             loaded("CUDA", 18), cores=64)
    assert not streams_as_source(KvchatConfig(ui={"stream_view": "markdown"}),
                                 loaded(), cores=2)
