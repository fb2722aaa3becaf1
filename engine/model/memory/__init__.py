"""The memory plan: where every byte of a model goes, before anything is allocated.

Owns the budget (detected or given), the KV cache's cost per token and per layer,
the planner (GPU/CPU layer split, context, KV type, what would fit instead), the
built-in model shapes and synthetic GGUFs of them.

May import: ``engine.model.gguf_header``, ``gguf_checks`` and ``devices``, and the
contract's ``errors`` and ``config``.
"""
