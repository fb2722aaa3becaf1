"""Theme files: the bundled ones load; a broken one is reported and skipped."""

from __future__ import annotations

from pathlib import Path

from tui.themes import bundled_theme_files, load_themes


def test_bundled_themes_load() -> None:
    themes, problems = load_themes(bundled_theme_files())
    assert problems == []
    assert {t.name for t in themes} >= {"kvchat-dark", "kvchat-light", "kvchat-high-contrast"}
    assert any(not t.dark for t in themes)


def test_broken_theme_is_skipped_with_a_reason(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('name = "mine"\nprimary = "#ff0000"\n')
    bad_colour = tmp_path / "bad.toml"
    bad_colour.write_text('name = "bad"\nprimary = "reddish"\n')
    typo = tmp_path / "typo.toml"
    typo.write_text('name = "typo"\nprimary = "#000"\nbackgrund = "#fff"\n')
    themes, problems = load_themes([good, bad_colour, typo])
    assert [t.name for t in themes] == ["mine"]
    assert problems == ["theme bad.toml: primary: Value error, not a colour: 'reddish' "
                        "(got 'reddish')", "theme typo.toml: backgrund: unknown key"]


async def test_the_message_box_follows_the_theme_and_keeps_its_edits_to_itself() -> None:
    """The box applies its theme's CSS only when the theme, its classes, focus or hover
    change, not at every key press: a new theme still recolours it. Its edits do not
    bubble up past it (nothing above listens)."""
    from textual.app import App, ComposeResult
    from textual.widgets import TextArea

    from tui.widgets.prompt_input import PromptInput

    heard: list[object] = []

    class BoxApp(App[None]):
        def compose(self) -> ComposeResult:
            yield PromptInput(id="prompt")

        def on_text_area_changed(self, event: TextArea.Changed) -> None:
            heard.append(event)

    app = BoxApp()
    async with app.run_test(size=(60, 8)) as pilot:
        box = app.query_one(PromptInput)
        box.focus()
        await pilot.pause()
        theme = box._theme
        assert theme is not None
        applied = []
        apply_css = theme.apply_css
        theme.apply_css = lambda area: (applied.append(area), apply_css(area))[1]  # type: ignore[method-assign]
        for key in "hello":
            await pilot.press(key)
            await pilot.pause()
        assert box.text == "hello" and heard == [] and applied == []

        def colours() -> set[object]:
            return {segment.style for segment in box.render_line(0) if segment.style}

        before = colours()
        app.theme = "textual-light" if app.theme != "textual-light" else "textual-dark"
        await pilot.pause()
        after = colours()
        assert before and after and before != after
