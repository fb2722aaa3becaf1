"""An OpenAI-compatible server as an engine: the request body and the streamed
chunks, errors as one line a person can act on, what the server is and what it
says about its cache and load; and ``kvchat serve``, found by its info route, whose
replies come as the engine's own typed events (``kvchat``).

May import: ``engine.structured.spec`` and the contract. Never llama.cpp.
"""
