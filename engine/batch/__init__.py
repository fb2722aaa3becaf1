"""Many replies in one llama.cpp context: continuous batching on the engine thread.

Owns the :class:`~engine.batch.decoder.BatchDecoder`: every active reply has a sequence
of its own in one context (``ModelConfig.parallel`` of them, sharing the ``n_ctx`` cells
of a unified KV cache, or with ``kv_layout = "split"`` a stream of ``n_ctx / parallel``
each), and each step is one ``llama_decode`` carrying every decoding
reply's pending token plus at most ``chunk`` tokens of prompts still being read (while
replies decode, only as many as keep the step within a few plain steps: ``pace.py``),
so a long prompt joining never freezes the replies already streaming. Replies join and
leave between steps; each has its own sampler chain (``engine.decode.sampling``, a
grammar when given), and the plain greedy rows of a step take one argmax together. N
answers to one prompt evaluate it once and share its cells (``llama_memory_seq_cp``).
Admission is planned on cells (``admission.py``): a reply
reserves its prompt and ``max_tokens``; what does not fit waits in a FIFO queue (its
position reported in ``Queued`` events), and past the queue's limit it is refused. A
reply that outgrows its reserve slides its own window (``window.py``, the arithmetic of
``engine.decode.kv_window``; ``seq_rm`` + ``seq_add`` on its sequence only). A finished
reply's sequence stays, idle, as its conversation's prefix until its cells are needed
(least recently used first): the next turn evaluates only what is new. A step is
launched and collected apart (``launch``, ``collect``): on a GPU the caller hands the
last step's events over while the decode runs. With a state
cache (``saved.py``, over ``engine.cache``) an idle sequence is saved before its cells
go (and at close), and a prompt that a saved state serves better than any idle
sequence gets it restored into its sequence: the single path's rules and key.

Each reply speculates on its own (``speculate.py``): its own prompt lookup over its
conversation and a small controller whose draft length follows its acceptance; its
pending token and drafts are consecutive rows of its sequence in the step's one decode,
its own sampler verifies them row by row, and rejected drafts leave its cells. The
step's rows stay within the load's batch-invariant rows, so greedy replies keep their
plain tokens where each sequence has its own cells (``kv_layout = "split"``); in the
shared pool another reply's token may take a rejected draft's cell and sum its
attention in another order. A draft *model* stays on the single-sequence path: it would
need a multi-sequence context of its own, decoded in step with the batch.

May import: ``engine.model``, ``engine.decode`` (its sampling and window arithmetic),
``engine.structured``, ``engine.cache`` (the state cache's pool and per-sequence state
calls), and the contract's ``api``, ``errors``, ``events`` and
``config``. Never ``backends``, ``routing``, ``serve``, ``tui`` or ``bench``.
"""
