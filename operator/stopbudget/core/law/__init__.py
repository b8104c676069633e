"""The budget law (DESIGN section 4) as a chain of small steps. PURE: no I/O, no clock.

Per tick, :func:`decide` takes the policy's spec, the EM-vs-budget curve in use,
the metrics read this tick (:class:`Observation`) and the state remembered from
the previous ticks (:class:`State`), and returns a :class:`Decision`: the budget
to apply, the law's recommendation, the target and floor budgets, the
:class:`Rule` of the step that acted and a one-line reason for status, Events
and logs. Same input, same output; ``now`` is an argument.

As VPA's ``logic/`` does, an estimator, then post-processors: steps 1 and 2
estimate ``b_target`` and ``b_floor`` from the evidence into the
:class:`~stopbudget.core.law.step.Context` every step reads, and propose the
target; each later step takes that :class:`~stopbudget.core.law.step.Proposal`
(budget, rule, reason, flags such as ``raise_for_quality``) and returns it, as
it was or with its own budget, rule and reason. The reported rule is that of the
last step that acted. ``chain.STEPS`` lists them in order:

====  ===============================  ============  ==============================
DES.  step                             file          rule it reports when it acts
====  ===============================  ============  ==============================
1     ``target_and_floor``             evidence.py   (``Context.evidence``,
                                                     ``Decision.unreachable``)
2     ``cost_cap``                     evidence.py   (``Context.evidence``)
1-2   ``propose``                      evidence.py   TARGET; NO_EVIDENCE
6     ``MetricsOrFallback``            fallback.py   runs 3-4, else ``fall_back``:
                                                     METRICS_WAIT, then FALLBACK
3     ``follow_load``                  load.py       LOAD (p > 1), TARGET (p <= 1)
3     ``predict_load``                 queueing.py   LOAD, TARGET (``model: queueing``)
4     ``guard_live_em``                quality.py    QUALITY_GUARD (and an audit)
4     ``raise_on_alert``               quality.py    ALERT
5     ``quantise_recommendation``      stability.py  (the recommendation)
4+    ``guard_floor``                  quality.py    FLOOR
5     ``apply_first``                  stability.py  (keeps the rule; settles)
5     ``keep_unchanged``               stability.py  (keeps the rule; settles)
5     ``raise_at_once``                stability.py  (keeps the rule; settles)
5     ``ignore_within_tolerance``      stability.py  TOLERANCE (settles)
5     ``stabilize_downscale``          stability.py  STABILIZATION (settles)
5     ``limit_step``                   stability.py  STEP_LIMIT
5     ``wait_for_cooldown``            stability.py  COOLDOWN (settles)
5     ``ignore_within_tolerance``      stability.py  TOLERANCE (settles)
5     ``move``                         stability.py  (keeps the rule; settles)
====  ===============================  ============  ==============================

Step 1 reads the curve in use: the pooled audits (:mod:`stopbudget.core.pooling`),
else ``quality.prior``. When no budget's lower bound reaches a bound, on a curve with
per-question outcomes it takes the cheapest budget McNemar's exact test does not find
worse than the best-measured one (:mod:`stopbudget.core.paired`), on a prior ``max``.

A step that *settles* decides the budget to apply and writes the final reason;
the chain ends there (``step.run``). Step 6 is listed last in DESIGN but acts in
place of 3 and 4, which read the very metrics it finds missing (no data is not
zero load); its proposal then meets the floor guard and stability like any other
(see ``fallback.py``). The floor guard, which DESIGN does not number, checks the
recommendation once it is on the step grid, i.e. what would be applied.

Files: one per group of closely related steps, named by what the group decides
(``evidence``, ``load``, ``queueing``, ``quality``, ``stability``, ``fallback``): each step is
a function of a few lines that shares its group's vocabulary, so a file per step
would scatter fifteen tiny functions, and a group reads top to bottom in the
chain's order. ``step.py`` holds what a step is (``Proposal``, ``Context``,
``Step``, ``run``, ``quantise``, ``fmt``); ``chain.py`` the order and
:func:`decide`; ``observation.py`` and ``decision.py`` the law's inputs and
outputs, which callers import from this package.
"""

from stopbudget.core.law.chain import STEPS, decide
from stopbudget.core.law.decision import Decision, Rule, State
from stopbudget.core.law.observation import Observation, SignalReading
from stopbudget.core.law.step import Context, Evidence, Proposal, Step

__all__ = [
    "STEPS",
    "Context",
    "Decision",
    "Evidence",
    "Observation",
    "Proposal",
    "Rule",
    "SignalReading",
    "State",
    "Step",
    "decide",
]
