"""kvchat's engine: an asyncio API over llama.cpp. Never imports Textual.

Entry points: :class:`engine.api.ChatEngine` (the interface UIs depend on),
:class:`engine.backends.local.LocalEngine` (llama.cpp in-process),
:class:`engine.backends.process.engine.ProcessEngine` (the same in a child process, as the app
runs it),
:class:`engine.session.ChatSession` (a conversation recorded in the store), and the
typed events in :mod:`engine.events`. Importing this package has no side effects.
"""
