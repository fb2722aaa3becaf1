"""kvchat's terminal faces: the Textual app (``tui.app``) and the CLI (``tui.cli``).

Nothing here imports llama_cpp: the UIs see models only through ``engine.api``.
"""
