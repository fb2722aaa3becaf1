"""How a token is drawn: llama.cpp's sampler chain, a host or in-graph argmax,
or the chain behind a grammar filter, and the choice between them for a request.

May import: ``engine.model``, ``engine.structured.spec``, and the contract's
``errors``, ``config`` and ``api``.
"""
