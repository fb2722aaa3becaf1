"""Bundled Textual themes, one TOML file each (loaded by tui.themes)."""
