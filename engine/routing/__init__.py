"""From a prompt to its route and everything the route decides.

Owns the cheap signals, the router's weighted vote, the model fallback (a
one-word constrained answer in a side context), the route templates (TOML, the
user's beside the bundled ones), token counts for budgets, and the route service
that puts them together for the session and ``kvchat route``.

May import: ``engine.model`` (the fallback's side context) and the contract's
``errors``, ``events``, ``config`` and ``api``.
"""
