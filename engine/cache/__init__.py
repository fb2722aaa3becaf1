"""The state cache: a conversation's KV sequence state, saved when another conversation
takes the context (or the engine closes, or the model is switched) and restored when a
prompt comes back that shares enough of its tokens, so switching back, reopening,
regenerating and editing evaluate only what is new.

It owns the saved states and their two tiers (RAM, then files on disk, least recently
used evicted first, RAM spilling to disk), the key a state is valid under (model file,
context size, KV type, window settings, llama.cpp version), the file format with its
checksum, and the calls into llama.cpp's per-sequence state API.

It may import the contract's vocabulary (``engine.config``, ``engine.events``,
``engine.errors``) and the ``model`` wing (the loaded model whose context it reads and
writes); ``decode``, ``batch`` and ``backends`` import it, never the other way.
"""
