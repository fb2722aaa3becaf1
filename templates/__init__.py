"""Route templates as data: one TOML file per route (see engine/routing/templates.py)."""
