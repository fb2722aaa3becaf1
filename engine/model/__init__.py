"""The model wing: a GGUF file from disk to a loaded llama.cpp model and context.

Owns reading and validating the GGUF header (no weights), the vocabulary alone,
chat formats (the GGUF's own template in a limited sandbox; else, or when it fails,
one by architecture), llama.cpp's log, the compute devices llama.cpp registered,
batch-invariant loading, the load itself (by the memory plan, in ``memory/``), and
the catalog of models found on disk (bundled, config dirs, LM Studio, Ollama,
Hugging Face, llama.cpp's cache) with the names ``--model`` accepts.

May import: the contract's ``errors``, ``events``, ``config`` and ``api`` (for
``ChatMessage``). Never ``decode``, ``backends``, ``routing`` or ``structured``.
"""
