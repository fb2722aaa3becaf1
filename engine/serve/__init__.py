"""``kvchat serve``: one loaded engine shared by every client, over HTTP.

Owns the server side: the scheduler that admits replies to the engine as fast as it
can generate them and queues the rest in arrival order (``scheduler``), the shared
engine with its counters and the events a waiting reply sees (``hub``), the
OpenAI-compatible chat completions (``openai_api``: request, response, SSE chunks,
stop strings), kvchat's own typed event stream and info (``app``: the Starlette
routes, the bearer key, errors as JSON), and listening, stopping and draining
(``server``: the socket, uvicorn, signals).

May import: the contract's ``api``, ``events``, ``errors`` and ``config``, and
``engine.backends`` (the engine it serves comes from the factory). Never ``session``
or ``store``: a client keeps its own conversations, the server only generates.
"""
