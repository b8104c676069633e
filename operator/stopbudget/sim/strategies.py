"""The budget strategies the simulator compares. PURE: no I/O, no clock.

Every strategy is asked once per control tick (the policy's
``control.interval``, in simulated time) for the budget of the requests that
arrive until the next tick:

* ``static-<N>``: always ``N``;
* ``reactive``: the rule production teams write first (:class:`Reactive`);
* ``stopbudget``: the real control law, :func:`stopbudget.core.law.decide`,
  with simulated audits scheduled by the operator's scheduler,
  :func:`stopbudget.core.audits.schedule.decide` (:class:`StopBudget`);
* ``oracle``: a schedule computed beforehand with perfect knowledge
  (:class:`Schedule`, built by the engine from :mod:`stopbudget.sim.model`),
  written through the same sink as the others (charged the same restarts).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from stopbudget.api import (
    RESTARTING_SINKS,
    Audit,
    AuditMethod,
    AuditResult,
    AuditScheduleState,
    AuditTrigger,
    CurveSource,
    LastAudit,
    StopPolicySpec,
)
from stopbudget.core import pooling
from stopbudget.core.audits import schedule
from stopbudget.core.curve import Answers, Curve, Point, from_prior
from stopbudget.core.law import Decision, Observation, State, decide
from stopbudget.sim.fleet import FleetConfig, FleetSignals
from stopbudget.sim.inputs import QualityTable
from stopbudget.sim.model import answer


@dataclass(frozen=True)
class Window:
    """Requests completed within a trailing window."""

    count: int
    hits: int
    tokens: int

    @property
    def em(self) -> float | None:
        return self.hits / self.count if self.count else None

    @property
    def mean_tokens(self) -> float | None:
        return self.tokens / self.count if self.count else None


@dataclass(frozen=True)
class Tick:
    """What a strategy can see at one control tick."""

    index: int
    #: Simulated seconds since the first arrival, and the same as a UTC instant.
    t: float
    now: datetime
    signals: FleetSignals
    #: The policy's signals (and live EM when ``quality.query`` is set), as the law reads them.
    observation: Observation
    #: Requests completed within the last ``seconds``.
    completed_within: Callable[[float], Window]


class Strategy(Protocol):
    name: str

    def budget(self, tick: Tick) -> int: ...


@dataclass
class Static:
    """The same budget all the time."""

    value: int
    name: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or f"static-{self.value}"

    def budget(self, tick: Tick) -> int:
        return self.value


@dataclass
class Schedule:
    """A budget per interval, fixed in advance (the oracle)."""

    name: str
    plan: Sequence[int]

    def budget(self, tick: Tick) -> int:
        return self.plan[tick.index]


@dataclass(frozen=True)
class ReactiveConfig:
    """The reactive rule's knobs (defaults: what a team would write in a first version)."""

    #: Moving-average window over completed requests, in seconds.
    window_s: float = 300.0
    #: Lower only when the moving-average EM is at least emTarget + margin.
    margin: float = 0.02
    #: "Tokens are high" above this many generated tokens per request; None: the
    #: policy's cost.maxTokensPerRequest, or, without one, any (every token costs).
    tokens_high: float | None = None


class Reactive:
    """Threshold rule on a moving average of live EM, one ladder step at a time.

    Every tick: if the EM of the requests completed in the last ``window_s`` is
    below ``emTarget``, go one ladder step up; if it is at least ``emTarget +
    margin`` and the mean tokens per request are high, one step down.  After a
    move it waits a whole window (and the policy's cooldown for sinks that
    restart pods) so the average reflects the new budget.  It never looks at
    load.  The ladder is the policy's ``audit.budgets`` (else the quality
    levels within bounds); it starts at ``budget.initial`` (or max), rounded up
    to the ladder.
    """

    name = "reactive"

    def __init__(self, spec: StopPolicySpec, ladder: Sequence[int], config: ReactiveConfig) -> None:
        self.ladder = sorted(ladder)
        start = spec.budget.start
        self.index = next(
            (i for i, b in enumerate(self.ladder) if b >= start), len(self.ladder) - 1
        )
        self.target = spec.quality.em_target
        self.min_samples = spec.quality.min_samples
        self.config = config
        cap = spec.cost.max_tokens_per_request
        self.tokens_high = config.tokens_high if config.tokens_high is not None else cap
        cooldown = (
            spec.control.cooldown.total_seconds()
            if spec.budget.sink.type in RESTARTING_SINKS
            else 0.0
        )
        self.hold = max(config.window_s, cooldown)
        self.last_move = 0.0

    def budget(self, tick: Tick) -> int:
        if tick.t - self.last_move >= self.hold:
            window = tick.completed_within(self.config.window_s)
            em, tokens = window.em, window.mean_tokens
            if window.count >= self.min_samples and em is not None and tokens is not None:
                high = self.tokens_high is None or tokens > self.tokens_high
                if em < self.target and self.index < len(self.ladder) - 1:
                    self.index += 1
                    self.last_move = tick.t
                elif em >= self.target + self.config.margin and high and self.index > 0:
                    self.index -= 1
                    self.last_move = tick.t
        return self.ladder[self.index]


@dataclass(frozen=True)
class AuditRecord:
    """One simulated audit."""

    started: float
    finished: float
    #: What the operator's scheduler labelled it: ``spec-change`` (the policy's creation),
    #: ``schedule`` or ``quality-guard`` (the law asked for it).
    trigger: AuditTrigger
    curve: Curve
    #: Whether the curve was used: every budget had quality.minSamples answers.
    used: bool
    #: The audit as the pool admits it (one measurement in a simulation).
    run: pooling.Run | None = None


@dataclass(frozen=True)
class LawCall:
    """One call of the real control law, with its inputs and output (for replay)."""

    t: float
    now: datetime
    curve: Curve
    observation: Observation
    state: State
    decision: Decision


def schedule_audit(
    audit: Audit | None,
    state: AuditScheduleState | None,
    *,
    now: datetime,
    created: datetime,
    running: bool,
    observation: Observation,
    evidence: bool = True,
    last_audit: LastAudit | None = None,
) -> schedule.ScheduleDecision:
    """Whether an audit starts this tick: :func:`stopbudget.core.audits.schedule.decide`,
    called as the operator's tick (``controller/reconcile.py``) calls it.

    ``created`` is the policy's creation (its first audit, trigger ``spec-change``, is
    due then); ``running`` whether an audit runs now; the pressure is the tick's, unknown
    when its metrics failed; ``evidence`` whether the law has a curve (False: a cold
    start, audited at once and never deferred); ``last_audit`` the latest audit as status
    would show it.  No annotation asks for a manual audit in a simulation, and no operator
    restart interrupts one.
    """
    return schedule.decide(
        audit,
        state,
        now=now,
        created=created,
        running=running,
        pressure=observation.pressure if observation.ok else None,
        annotations={},
        last_audit=last_audit,
        evidence=evidence,
    )


def audit_seconds(audit: Audit, quality: QualityTable, fleet: FleetConfig) -> float:
    """How long a simulated audit takes, from its work (``--audit-duration model``).

    An audit of ``n = min(sampleSize, questions)`` questions generates, per question,
    the thinking tokens the quality file records (the mean over its questions): at every
    ladder budget with ``method: direct`` (one request per question and budget), at the
    largest with ``truncate`` (one request, scored on each prefix).  It decodes
    ``concurrency`` sequences at a time at the rate of a sequence in a full batch
    (``1 / (step + step-per-seq x maxBatch)`` tokens/s: the audit shares a busy replica),
    so it takes ``n x tokens per question / (concurrency x rate)`` seconds.  Prefill and
    the answers' own tokens are left out (a lower bound).
    """
    ladder = sorted(audit.budgets)
    budgets = ladder if audit.method == AuditMethod.DIRECT else ladder[-1:]
    questions = range(quality.questions)
    per_question = sum(
        sum(answer(quality, q, b)[1] for q in questions) / quality.questions for b in budgets
    )
    size = min(audit.sample_size, quality.questions)
    return size * per_question / (audit.concurrency * fleet.rate(fleet.max_batch))


@dataclass
class StopBudget:
    """The real law (:func:`stopbudget.core.law.decide`) on simulated metrics and audits.

    Before the first audit the curve is ``quality.prior``.  Audits are scheduled by the
    operator's own scheduler (:func:`schedule_audit`), with the policy created at
    ``created`` (the first tick): the first audit at creation (trigger ``spec-change``;
    without a prior never deferred: until it lands the law has no curve),
    then one per slot of the policy's cron schedule on the simulated clock, or, with
    ``audit_every``, one per period of that many seconds (a fixed period has no cron
    expression: each period queues a ``schedule`` trigger through
    :func:`stopbudget.core.audits.schedule.request`), and one when a decision asks for
    it (``quality-guard``).  So deferral while pressure > 1 (``audit.deferUnderPressure``,
    at most ``audit.maxDeferral`` from the first deferral), one audit at a time (a due
    trigger waits for the running audit), missed slots collapsing into one, and the
    precedence of triggers are the operator's.  An audit draws ``audit.sampleSize``
    questions (a fresh sample each time: the sampling noise of a real audit), scores
    them at every ladder budget (per question, as the operator's audits do), and from the
    first tick after ``audit_duration`` has passed the curve in use pools it with the
    previous audits as the operator does (:mod:`stopbudget.core.pooling`).  Audits do not
    load the simulated fleet.
    """

    spec: StopPolicySpec
    quality: QualityTable
    created: datetime
    audit_duration: float
    seed: int
    #: Audit period in simulated seconds instead of the policy's cron schedule; None: cron.
    audit_every: float | None = None
    name: str = "stopbudget"
    calls: list[LawCall] = field(default_factory=list)
    audits: list[AuditRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.audit_every is not None and not (
            self.audit_every > 0 and math.isfinite(self.audit_every)
        ):
            raise ValueError(f"audit period must be positive, got {self.audit_every}")
        self.curve = from_prior(self.spec.quality.prior, self.spec.quality.confidence)
        self.state = State()
        #: The audits pooled into the curve in use (:mod:`stopbudget.core.pooling`).
        self.history: tuple[pooling.Run, ...] = ()
        self._rng = random.Random(f"audits:{self.seed}")  # noqa: S311 - not security
        self._origin = self.created
        self._pending: AuditRecord | None = None
        audit = self.spec.audit
        if audit is not None and self.audit_every is not None:
            audit = audit.model_copy(update={"schedule": None})  # the period replaces cron
        #: The audit section as the scheduler sees it, and what it keeps in status.
        self._audit = audit
        self._schedule: AuditScheduleState | None = None
        #: The end of the current period (with ``audit_every``): a schedule trigger is due.
        self._next_period = self.audit_every or math.inf

    def _measure(self, t: float, trigger: AuditTrigger) -> None:
        audit = self.spec.audit
        assert audit is not None
        size = min(audit.sample_size, self.quality.questions)
        sample = self._rng.sample(range(self.quality.questions), size)
        points = []
        for b in sorted(audit.budgets):
            answers = [answer(self.quality, q, b) for q in sample]
            correct = sum(1 << i for i, (hit, _) in enumerate(answers) if hit)
            points.append(
                Point(
                    budget=b,
                    hits=sum(hit for hit, _ in answers),
                    samples=size,
                    mean_tokens=sum(tokens for _, tokens in answers) / size,
                    audits=1,
                    answers=(Answers(scored=(1 << size) - 1, correct=correct),),
                )
            )
        curve = Curve.of(points, self.spec.quality.confidence, CurveSource.AUDIT)
        used = size >= self.spec.quality.min_samples
        run = pooling.Run(self.created + timedelta(seconds=t), "simulated", size, curve.points)
        self._pending = AuditRecord(t, t + self.audit_duration, trigger, curve, used, run)

    def _request(self, trigger: AuditTrigger) -> None:
        if self._audit is not None:
            self._schedule = schedule.request(self._schedule, trigger)

    def budget(self, tick: Tick) -> int:
        t = tick.t
        self._origin = tick.now - timedelta(seconds=t)  # the instant of t = 0
        # What arrived since the last tick: a finished audit, a period's slot.
        pending = self._pending
        if pending is not None and pending.finished <= t:
            self.audits.append(pending)
            self._pending = None
            if pending.used and pending.run is not None:
                self.history, _ = pooling.admit(
                    self.history, pending.run, self.spec.quality.confidence
                )
                self.curve = pooling.pooled(self.history, self.spec.quality.confidence)
        period = self.audit_every
        if period is not None and t >= self._next_period:
            self._request(AuditTrigger.SCHEDULE)  # missed periods collapse into one
            self._next_period = (t // period + 1) * period
        # The law, then the audits, in the order of the operator's tick.
        decision = decide(self.spec, self.curve, tick.observation, self.state, tick.now)
        self.calls.append(LawCall(t, tick.now, self.curve, tick.observation, self.state, decision))
        self.state = decision.state
        if decision.request_audit:
            self._request(AuditTrigger.QUALITY_GUARD)
        plan = schedule_audit(
            self._audit,
            self._schedule,
            now=tick.now,
            created=self.created,
            running=self._pending is not None,
            observation=tick.observation,
            evidence=not self.curve.empty,
            last_audit=self._last_audit(),
        )
        self._schedule = plan.state if self._audit is not None else None
        if plan.action is schedule.Action.START and plan.trigger is not None:
            self._measure(t, plan.trigger)
        return decision.budget

    def _last_audit(self) -> LastAudit | None:
        """``status.lastAudit`` as the operator would write it: the running or latest audit."""
        record = self._pending or (self.audits[-1] if self.audits else None)
        if record is None:
            return None
        result = AuditResult.RUNNING if record is self._pending else AuditResult.SUCCEEDED
        when = self._origin + timedelta(seconds=record.started)
        return LastAudit(time=when, trigger=record.trigger, result=result)

    def first_evidence(self) -> float | None:
        """Simulated seconds (of the run) of the first decision made with a curve (the first
        tick with a prior); None if the law never had one."""
        return next((c.t for c in self.calls if not c.curve.empty), None)

    def finish(self) -> None:
        """Record an audit still running at the end."""
        if self._pending is not None:
            self.audits.append(self._pending)
            self._pending = None
