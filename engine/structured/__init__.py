"""Structured output: what a reply must be, whether it is, and trying again.

Owns the output spec and its grammar, the checks (JSON with a schema, fenced code,
lists), the retry ladder (repair, stricter prompts, grammar-constrained decoding)
and the attempt log the store keeps for review.

May import: ``engine.routing.templates`` (a route's retry policy) and the
contract's ``errors`` and ``events``.
"""
