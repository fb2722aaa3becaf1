"""The local engine in a process of its own: the parent's engine, the child's
loop (``python -m engine.backends.process.child``), the launcher, and the wire
between them; and the first load of a model file apart (``preflight``), for the
commands that load it in their own process.

May import: ``engine.backends.local`` and ``channel``, ``engine.model``
(bundled files, GGUF headers), ``engine.files`` and the contract.
"""
