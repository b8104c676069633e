"""Step 3, load, model-based (``spec.control.model: queueing``): predict, then choose.

The reactive step (:mod:`~stopbudget.core.law.load`) scales the budget by the
pressure, as if the load were proportional to the budget. This step predicts the
pressure each ladder budget ``b`` would cause from what the fleet is asked to do
there, as a utilisation (arXiv 2601.10274 models a reasoning server as a queue
whose service time is affine in the tokens; here ``rho = arrival x tokens /
capacity``):

* demand at ``b``: ``arrival_rate x (tokens(b) + extra)`` tokens per second, with
  ``tokens(b)`` the audits' mean tokens per request at ladder budget ``b`` and
  ``extra`` the tokens a served request generates beyond the audit's at the
  applied budget (``max(0, served_tokens - tokens(applied))``: the traffic's own
  answers are longer or shorter than the golden set's; 0 when unmeasured);
* capacity at target: ``throughput / p``, the throughput at which the signals
  would sit at their targets (signals taken as proportional to the work served);
* predicted pressure ``p(b) = demand(b) / capacity``.

The predicted pressure is the larger of that and ``p x (tokens(b) + extra) /
(tokens(applied) + extra)`` (the pressure scaled by tokens per request, which
is ``p`` at the applied budget): requests already queued keep their budget, so
a lull in arrivals (a trailing rate near 0) does not read as an empty fleet.

It keeps the highest ladder budget within ``[b_floor, b_target]`` whose predicted
pressure is at most 1, else ``b_floor`` (the quality floor is never traded for
load; the floor guard checks it again on the grid). Going up (``p <= 1``) it
goes no higher than the reactive step's headroom ``r / p``: the arrival rate is
a trailing window, and on the bursty Azure traces a jump to the predicted budget
came just before the next burst (simulator, seeds 0-3). More arrivals never
raise the choice: ``p(b)`` grows with the arrival rate. An idle fleet (``p = 0``)
gets what the reactive step proposes there, ``b_target``.

Runs after :func:`~stopbudget.core.law.load.follow_load` and replaces its
proposal; with ``model: reactive`` (the default) it does nothing. Without its
inputs (no arrival rate or throughput series, no tokens per request in the
curve) it keeps the reactive proposal and appends why to its reason. PURE.

Not the default: in the simulator (``benchmarks/bench_law_model.py``: ``stopbudget
simulate --law reactive|queueing``, both bundled Azure traces, seeds 0-9, the
configMap sink) it spent fewer tokens per request than the reactive step on 18
of 20 runs, but on the code trace its SLO attainment was lower on 8 seeds of 10
and its EM-target attainment lower on 5 (mean 68.3 % against 72.5 %): a trailing
arrival rate does not foresee that trace's bursts. It beat reactive (fewer
tokens, SLO and EM target no worse) on 5 seeds of 20; the rule asks for all.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from stopbudget.api import LoadModel
from stopbudget.core.law.decision import Rule
from stopbudget.core.law.step import Context, Evidence, Proposal, fmt


@dataclass(frozen=True)
class Load:
    """The measured inputs of the prediction."""

    pressure: float
    arrival_rate: float
    throughput: float
    #: Tokens per request beyond the audits' (>= 0).
    extra: float
    #: The audits' tokens per request at the applied budget; None when unknown.
    applied: float | None = None

    def predicted(self, tokens: float) -> float:
        """Pressure at a budget whose requests generate ``tokens`` (audit mean) each."""
        if self.pressure <= 0.0:
            return 0.0
        per_request = tokens + self.extra
        demand = 0.0
        if self.arrival_rate > 0.0:
            demand = self.arrival_rate * per_request / self.throughput
        scaled = 0.0
        if self.applied is not None and self.applied + self.extra > 0.0:
            scaled = per_request / (self.applied + self.extra)
        return self.pressure * max(demand, scaled)


def predict_load(proposal: Proposal, context: Context) -> Proposal:
    """``model: queueing``: the highest ladder budget whose predicted pressure is <= 1."""
    evidence = context.evidence
    if context.spec.control.model is not LoadModel.QUEUEING or evidence is None:
        return proposal
    ladder = tokens_per_budget(context, evidence)
    load, missing = measured_load(context, ladder)
    if load is None or not ladder:
        why = missing or "no tokens per request in the curve within [floor, target]"
        return replace(proposal, reason=f"{proposal.reason} (queueing model: {why}: reactive)")
    return choose(proposal, evidence, ladder, load)


def tokens_per_budget(context: Context, evidence: Evidence) -> dict[int, float]:
    """Mean tokens per request of each ladder budget within ``[b_floor, b_target]``."""
    return {
        p.budget: p.mean_tokens
        for p in context.curve.points
        if p.mean_tokens is not None and evidence.floor <= p.budget <= evidence.target
    }


def measured_load(context: Context, ladder: dict[int, float]) -> tuple[Load | None, str]:
    """The prediction's inputs, or None and what is missing."""
    obs = context.observation
    pressure = obs.pressure
    if obs.arrival_rate is None:
        return None, "no arrival rate"
    if obs.throughput is None:
        return None, "no throughput"
    if obs.throughput <= 0.0 and pressure > 0.0 and obs.arrival_rate > 0.0:
        return None, "no tokens generated in the window"
    extra = 0.0
    applied = context.curve.at(context.current) if context.current is not None else None
    if obs.served_tokens is not None and applied is not None and applied.mean_tokens is not None:
        extra = max(0.0, obs.served_tokens - applied.mean_tokens)
    tokens_now = applied.mean_tokens if applied is not None else None
    load = Load(pressure, max(obs.arrival_rate, 0.0), max(obs.throughput, 0.0), extra, tokens_now)
    return load, ""


def choose(
    proposal: Proposal, evidence: Evidence, ladder: dict[int, float], load: Load
) -> Proposal:
    """The highest budget of ``ladder`` predicted at or under pressure 1, else the floor."""
    fitting = [b for b, tokens in ladder.items() if load.predicted(tokens) <= 1.0]
    chosen = max(fitting, default=evidence.floor)
    at = ladder.get(chosen)
    predicted = f"predicted pressure {fmt(load.predicted(at))}" if at is not None else "none fits"
    budget, headroom = float(chosen), ""
    if load.pressure <= 1.0 and proposal.budget < budget:  # up by the headroom only
        budget = max(float(evidence.floor), proposal.budget)
        headroom = f", up by the headroom to {fmt(budget)}"
    reason = (
        f"queueing: pressure {fmt(load.pressure)} at {fmt(load.throughput)} tokens/s, "
        f"{fmt(load.arrival_rate)} req/s: budget {chosen} ({predicted}){headroom}, "
        f"floor {evidence.floor}, target {evidence.target}"
    )
    rule = Rule.TARGET if budget >= evidence.target else Rule.LOAD
    return replace(proposal, budget=budget, rule=rule, reason=reason)
