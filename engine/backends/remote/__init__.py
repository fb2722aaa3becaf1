"""An OpenAI-compatible server as an engine: the request body and the streamed
chunks, errors as one line a person can act on, what the server is and what it
says about its cache and load.

May import: ``engine.structured.spec`` and the contract. Never llama.cpp.
"""
