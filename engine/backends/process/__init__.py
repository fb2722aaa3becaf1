"""The local engine in a process of its own: the parent's engine, the child's
loop (``python -m engine.backends.process.child``), the launcher, and the wire
between them.

May import: ``engine.backends.local`` and ``channel``, and the contract.
"""
