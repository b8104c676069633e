"""Audits: measure the EM-vs-budget curve against the live model.

``em`` scores answers, ``dataset`` reads the golden set, ``runner`` sends it to an
OpenAI-compatible endpoint at every budget of the ladder, ``command`` is
``stopbudget audit``.
"""
