"""A long streamed reply goes into several Markdown widgets, cut only where the cut
changes nothing: their sources add up to the reply, and parse to the same blocks.

Widget-level: the chunks come from a script, as the reply worker would post them."""

from __future__ import annotations

import random

from markdown_it import MarkdownIt
from textual.app import App, ComposeResult

from engine.events import Retry
from tui.widgets.chat_pane import ChatPane
from tui.widgets.reply_blocks import BLOCK_LINES, plan_write


def long_reply(sections: int) -> str:
    """Prose, loose lists, code fences with blank lines and a fence line inside a
    longer fence: the places a naive cut at a blank line would break."""
    parts = []
    for i in range(sections):
        parts.append(
            f"## Part {i}\n\nSome prose about part {i}, **bold** and `code`.\n\n"
            f"- a loose list, item one\n\n- item two\n\n  still item two\n\n"
            f"1. first\n\n2. second\n\n"
            "```python\n"
            f"def part_{i}() -> None:\n\n"
            "    pass\n\n"
            "x = 1\n\n"
            "```\n\n"
            "````markdown\n"
            "```\n\nnot a fence end\n\n```\n"
            "````\n\n"
            "> a quote\n>\n> goes on\n\n")
    return "".join(parts)


def chunks_of(text: str, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out, i = [], 0
    while i < len(text):
        n = rng.randint(1, 24)
        out.append(text[i:i + n])
        i += n
    return out


def block_types(source: str) -> list[str]:
    return [t.type for t in MarkdownIt("gfm-like").parse(source)]


class ChatApp(App[None]):
    CSS_PATH = "../tui/app.tcss"

    def compose(self) -> ComposeResult:
        yield ChatPane(id="chat")


def test_cuts_never_split_a_block() -> None:
    text = long_reply(12)
    # What ReplyMessage.append does with the plans, without widgets.
    blocks, block, held = [], "", ""
    for chunk in chunks_of(text):
        pending, held = held + chunk, ""
        while pending:
            plan = plan_write(block, pending)
            block += plan.head
            if not plan.cut:
                held = plan.tail
                break
            blocks.append(block)
            block, pending = "", plan.tail
    block += held
    blocks.append(block)
    assert len(blocks) > 2
    assert "".join(blocks) == text
    assert [t for b in blocks for t in block_types(b)] == block_types(text)


async def test_a_long_streamed_reply_is_several_markdown_blocks() -> None:
    text = long_reply(16)
    assert text.count("\n") > 4 * BLOCK_LINES
    app = ChatApp()
    async with app.run_test(size=(100, 30)) as pilot:
        pane = app.query_one(ChatPane)
        reply = await pane.add_reply()
        for chunk in chunks_of(text, seed=1):
            await reply.append(chunk)
            if len(reply.text) % 7 == 0:
                await pilot.pause()
        await reply.finish("done", final_text=text)
        await pilot.pause()
        blocks = reply.blocks
        assert len(blocks) > 3
        assert reply.text == text
        assert "".join(b.source for b in blocks) == text
        assert [t for b in blocks for t in block_types(b.source)] == block_types(text)
        # Following the stream, the blocks far above the view were parked behind a
        # spacer of their height; scrolling up shows them again.
        parked = [b for b in blocks if not b.display]
        assert parked and blocks[-1].display
        height = pane.virtual_size.height
        pane.scroll_home(animate=False)
        await pilot.pause()
        assert all(b.display for b in reply.blocks)
        assert pane.virtual_size.height == height


async def test_a_retry_starts_again_in_one_block() -> None:
    text = long_reply(8)
    app = ChatApp()
    async with app.run_test(size=(100, 30)) as pilot:
        pane = app.query_one(ChatPane)
        reply = await pane.add_reply()
        for chunk in chunks_of(text):
            await reply.append(chunk)
        await pilot.pause()
        assert len(reply.blocks) > 1
        await reply.start_attempt(Retry(attempt=2, strategy="stricter_prompt",
                                        reason="no JSON found"))
        await reply.append('{"ok": true}')
        await reply.finish("done")
        await pilot.pause()
        assert [b.source for b in reply.blocks] == ['{"ok": true}']
        assert reply.text == '{"ok": true}'
        assert len(reply.query(".attempt")) == 1


async def test_a_streaming_reply_grows_into_reserved_lines_and_scrolls_in_steps() -> None:
    text = "".join(f"Paragraph {i} about the press and its type.\n\n" for i in range(120))
    app = ChatApp()
    async with app.run_test(size=(100, 30)) as pilot:
        pane = app.query_one(ChatPane)
        await pane.add_user("Tell me about the press.")
        reply = await pane.add_reply()
        pane.anchor()
        scrolls, frames, last = 0, 0, pane.scroll_y
        for i in range(0, len(text), 60):  # two or three lines a frame
            await reply.append(text[i:i + 60])
            await pilot.pause()
            if pane.max_scroll_y > 0:  # the pane overflows: without a reserve, a scroll
                frames += 1            # on every frame
                scrolls += pane.scroll_y != last
            last = pane.scroll_y
            # The end stays in view (while all fits, Textual's anchor sets it negative).
            assert pane.scroll_y == pane.max_scroll_y or pane.max_scroll_y == 0
        # Once the text overflowed the pane it grew into blank lines reserved below it,
        # half a pane at a time: the pane scrolled once per reserve, not per frame.
        assert reply.styles.min_height is not None
        assert frames > 70 and scrolls < frames / 3
        used = sum(c.outer_size.height for c in reply.children if c.display)
        assert reply.size.height > used  # blank lines under the text
        await reply.finish("done")
        # Whatever comes next goes right below the text: the reserve is given back.
        user = await pane.add_user("And then?")
        await pilot.pause()
        assert reply.styles.min_height is None
        assert reply.size.height == sum(c.outer_size.height for c in reply.children
                                        if c.display)
        assert user.region.y - reply.region.bottom <= user.styles.margin.top
