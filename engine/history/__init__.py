"""Stored conversations as message trees, and searching them.

Owns the message tree (each message's parent, each conversation's active leaf, the
path the model sees, siblings, switching and branching, the whole tree written out)
and the full-text index over messages and titles (FTS5, with a LIKE fallback), each a
mixin of :class:`engine.store.Store` with its schema migration: same file, same lock;
and which process streams a reply (``owner``), so that only replies whose process is gone
are marked interrupted.

May import: the contract's ``errors``, ``events`` and ``config`` only; the store
imports this wing, so nothing here may import the store or the session.
"""
