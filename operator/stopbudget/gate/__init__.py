"""The gate: an OpenAI-compatible reverse proxy that enforces token budgets live (DESIGN §8).

``caps`` (which fields, the body rewrite), ``budgets`` (the budget table and
file parsing) and ``usage`` (tokens and finish reasons of a response) are pure;
``watcher`` reads the budget directory, ``proxy`` is the aiohttp app,
``server`` runs it with its metrics endpoint, ``command`` is ``stopbudget gate``.
"""
