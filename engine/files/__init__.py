"""How kvchat writes the files it owns: whole or not at all, and private to the user.

Owns the one atomic-write helper every file kvchat writes goes through (a temporary
file beside the target, synced, renamed over it, so a reader or a crash sees the old
file or the new one, never half of one) and the private data dir (0700, its files
0600: the store, the state cache, the UI preferences, exports), see
:mod:`engine.files.atomic`.

May import nothing of kvchat but the contract's ``errors``: every layer may import
it, the store, the state cache and the app's preferences alike.
"""
