"""Offline simulator of a serving fleet, for ``stopbudget simulate`` and the benchmarks.

It answers "what would this StopPolicy have done to this traffic?" and compares
stopbudget's real control law (:func:`stopbudget.core.law.decide`, imported, not
copied) with static budgets, a reactive EM-threshold rule and an oracle with
perfect foresight, on the same requests and the same questions.

Modules, in dependency order:

* :mod:`~stopbudget.sim.inputs`: the trace and quality CSV files (the only file
  reading), with line-and-column errors;
* :mod:`~stopbudget.sim.fleet`: replicas with continuous batching, a queue,
  per-request latency, the signals a Prometheus scrape would see (PURE);
* :mod:`~stopbudget.sim.model`: what a request costs and scores at a budget,
  and the oracle's objective (PURE);
* :mod:`~stopbudget.sim.strategies`: static, reactive, stopbudget (the real law,
  with simulated audits scheduled by the operator's scheduler), oracle schedule (PURE);
* :mod:`~stopbudget.sim.engine`: one simulation of every strategy and the
  figures of each (PURE);
* :mod:`~stopbudget.sim.report`, :mod:`~stopbudget.sim.plots`,
  :mod:`~stopbudget.cli.simulate`: table, ``results.csv``, PNGs, the command.

Everything is deterministic for a seed: simulated time only, no clock.  This
package module imports nothing, so ``stopbudget --help`` stays fast; import from
the modules, e.g. ``from stopbudget.sim.engine import simulate``.
"""
