"""Engines behind the :class:`~engine.api.ChatEngine` interface, and the factory
that picks one from the config.

``local``: llama.cpp on a worker thread of this process. ``process``: the same in a
child process (the app's default), over a line-delimited JSON wire. ``remote``: an
OpenAI-compatible server (llama-server, vLLM, Ollama). ``channel`` carries events
from a thread into asyncio. ``model_switch`` lists the models a local engine could
switch to and checks one before the loaded model is freed.

May import: every other wing and the contract's ``api``, ``events``, ``errors`` and
``config``. Never ``session`` or ``store`` (a backend knows nothing of conversations).
"""
