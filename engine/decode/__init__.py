"""The token loop, on the engine thread: prefill, sample, decode, evict, speculate.

Owns the :class:`~engine.decode.generator.Generator` (one reply from a request to
its ``Done``), the KV cache's bookkeeping (:class:`~engine.decode.kv_cache.KVCache`:
prefix reuse, room for a reply, the sliding window), the window's arithmetic, the
context map (which tokens of each message the cache still holds), a turn's state,
speculative decoding (drafters and the controller) and, in ``sampling/``, how each
token is drawn.

May import: ``engine.model`` and ``engine.structured``, and the contract's
``errors``, ``events``, ``config`` and ``api``. Never ``backends`` or ``routing``.
"""
