"""Audits: measure the EM-vs-budget curve against the live model.

``em`` scores answers and ``dataset`` reads the golden set (both pure);
``runner`` sends it to an OpenAI-compatible endpoint at every budget of the
ladder; ``schedule`` decides when an audit is due and ``alerts`` receives
Alertmanager's webhook; ``command`` is ``stopbudget audit``.
"""
