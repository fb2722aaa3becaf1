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
