"""Structured output: what a reply must be, whether it is, and trying again.

Owns the output spec, its grammar and the retry policy a route template sets; the
checks (JSON with a schema, fenced code, lists); the retry ladder (repair, stricter
prompts, grammar-constrained decoding); and the attempt log the store keeps.

May import: the contract's ``errors``, ``events`` and ``config`` only; the interface
(``engine.api``) names the output spec, so nothing here may import it.
"""
