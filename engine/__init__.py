"""kvchat's engine: an asyncio API over llama.cpp. Never imports Textual.

The contract, at this package's top:

- :mod:`engine.api`: the :class:`~engine.api.ChatEngine` interface UIs depend on, and
  what it takes (:class:`~engine.api.ChatRequest`, :class:`~engine.api.ChatMessage`);
- :mod:`engine.events`: the typed events every engine emits;
- :mod:`engine.errors`: the errors it raises, each one line for a person;
- :mod:`engine.config`: the settings, from one TOML file;
- :mod:`engine.session`: a conversation over any engine, routed, checked and stored;
- :mod:`engine.store`: conversations, messages and attempts in one SQLite file.

The wings, each a subpackage whose docstring says what it owns and may import:
``model`` (GGUF files, loading, the memory plan), ``decode`` (the token loop),
``backends`` (local, in a process, on a server), ``routing`` and ``structured``.
docs/architecture.md has the picture. Importing this package has no side effects.
"""
