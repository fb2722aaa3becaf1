"""The model wing: a GGUF file from disk to a loaded llama.cpp model and context.

Owns reading and validating the GGUF header (no weights), the vocabulary alone,
chat formats (the GGUF's own template in a sandbox, else one by architecture),
llama.cpp's log, the compute devices llama.cpp registered, batch-invariant loading,
and the load itself (by the memory plan, in ``memory/``).

May import: the contract's ``errors``, ``events``, ``config`` and ``api`` (for
``ChatMessage``). Never ``decode``, ``backends``, ``routing`` or ``structured``.
"""
