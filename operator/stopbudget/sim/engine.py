"""One simulation: every strategy over the same requests, and their figures. PURE.

:func:`simulate` replays the workload through a fresh fleet once per strategy.
Time advances in control intervals (the policy's ``control.interval``): at
each tick the strategy sees the fleet's signals and writes a budget.  It
reaches the requests through the policy's sink (or :attr:`Options.sink`): a
sink read live serves it to the requests arriving ``propagation_s`` after the
tick (a request's budget is fixed when it arrives, as at a gateway); a sink in
the pod template (``arg``, ``env``) rolls the fleet's replicas, each serving its
template's budget (:class:`~stopbudget.sim.fleet.Fleet`).  Every strategy is
charged the same, the oracle too.  After the last interval the fleet drains, so
every request completes.
Nothing here reads a clock or a file; progress is reported through a callback.
"""

from __future__ import annotations

import dataclasses
import math
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import pairwise

from stopbudget.api import RESTARTING_SINKS, SinkType, StopPolicySpec, format_duration
from stopbudget.core.law import Observation, SignalReading
from stopbudget.sim import coldstart, rollout
from stopbudget.sim.coldstart import ColdStart
from stopbudget.sim.fleet import Fleet, FleetConfig, FleetSignals, Rollout, quantile
from stopbudget.sim.inputs import QualityTable, Trace
from stopbudget.sim.model import Objective, Served, Workload, candidates, meets, serve
from stopbudget.sim.strategies import (
    AuditRecord,
    LawCall,
    Reactive,
    ReactiveConfig,
    Schedule,
    Static,
    StopBudget,
    Strategy,
    Tick,
    Window,
    audit_seconds,
)

#: What the fleet exports, by the signal kind a policy's signal name maps to.
SIGNAL_KINDS: Mapping[str, Callable[[FleetSignals], float]] = {
    "queue": lambda s: float(s.queue),
    "kvCache": lambda s: s.kv_cache,
    "latencyP95": lambda s: s.latency_p95,
    "latencyP99": lambda s: s.latency_p99,
    "running": lambda s: float(s.running),
}
#: Default latency SLO when neither --latency-slo nor a latency signal gives one.
DEFAULT_SLO_S = 60.0
#: The sinks the simulator knows; a budget written to the first two rolls the pods.
SINKS = ("arg", "env", "configMap", "aiGateway", "annotation")
RESTARTING = frozenset(s.value for s in RESTARTING_SINKS)


class PolicyError(ValueError):
    """The policy cannot be simulated as written (the message names the field and the fix)."""


def signal_kind(name: str) -> str | None:
    """The fleet signal a policy signal stands for, from its name (queries are not run).

    queue/waiting/pending -> queue; kv/cache -> kvCache; a name with latency
    (or ttft, e2e) -> latencyP95, or latencyP99 when it contains 99;
    running/batch/concurrency -> running.
    """
    n = name.lower()
    if any(w in n for w in ("queue", "waiting", "pending")):
        return "queue"
    if "kv" in n or "cache" in n:
        return "kvCache"
    if any(w in n for w in ("latency", "ttft", "e2e")):
        return "latencyP99" if "99" in n else "latencyP95"
    if any(w in n for w in ("running", "batch", "concurren")):
        return "running"
    return None


def signal_kinds(spec: StopPolicySpec) -> list[tuple[str, float, str]]:
    """(name, target, kind) of each load signal; PolicyError for one the fleet cannot export."""
    out = []
    for i, sig in enumerate(spec.load.signals):
        kind = signal_kind(sig.name)
        if kind is None:
            raise PolicyError(
                f"spec.load.signals[{i}].name: the simulator cannot tell what {sig.name!r} "
                f"measures; it exports {', '.join(SIGNAL_KINDS)} and maps signal names by "
                "their words (queue/waiting/pending, kv/cache, latency (99), running/batch): "
                "rename the signal"
            )
        out.append((sig.name, sig.target, kind))
    return out


@dataclass(frozen=True)
class Options:
    """Everything about a simulation that is not in the trace, quality file or policy."""

    fleet: FleetConfig = field(default_factory=FleetConfig)
    #: Arrival times are divided by this (2: twice the request rate).
    time_scale: float = 1.0
    seed: int = 0
    #: A request meets the latency SLO when its end-to-end latency is at most this;
    #: None: the target of the policy's latency signal, else DEFAULT_SLO_S.
    latency_slo_s: float | None = None
    #: Audit period in simulated seconds, in place of the policy's audit.schedule; None:
    #: the schedule (cron, on the simulated clock).
    audit_every_s: float | None = None
    #: Time from an audit's start to its curve being used; None: modelled from the audit's
    #: work (:func:`stopbudget.sim.strategies.audit_seconds`).
    audit_duration_s: float | None = 300.0
    #: EM-target attainment and time below floor are judged on windows this long
    #: (whole control intervals), over the requests arriving in each.
    eval_window_s: float = 300.0
    reactive: ReactiveConfig = field(default_factory=ReactiveConfig)
    #: Strategy names to run (None: all); the oracle always runs.
    only: tuple[str, ...] | None = None
    #: Where the budget is written, one of SINKS; None: the policy's budget.sink.type.
    sink: str | None = None
    #: A sink in the pod template (arg, env): from a pod's creation to it taking requests.
    restart_s: float = 120.0
    #: The rolling update's maxSurge and maxUnavailable (a count or a percentage).
    max_surge: str = rollout.DEFAULT_MAX_SURGE
    max_unavailable: str = rollout.DEFAULT_MAX_UNAVAILABLE
    #: A sink read live (configMap, aiGateway, annotation): from the patch to every
    #: replica (or the gate) serving the new budget.
    propagation_s: float = 2.0
    #: Cold start (:mod:`stopbudget.sim.coldstart`): quality.prior dropped, the policy
    #: created at the trace's busiest minute, an hour from there.
    cold_start: bool = False

    def __post_init__(self) -> None:
        if self.sink is not None and self.sink not in SINKS:
            raise ValueError(f"sink {self.sink!r} is not one of {', '.join(SINKS)}")
        for name in ("restart_s", "propagation_s"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a number of seconds >= 0, got {value}")
        rollout.counts(self.fleet.replicas, self.max_surge, self.max_unavailable)

    def sink_of(self, spec: StopPolicySpec) -> str:
        """The sink simulated: the override, else the policy's."""
        return self.sink or spec.budget.sink.type.value

    def rolling_update(self, spec: StopPolicySpec) -> Rollout | None:
        """The rolling update a patch starts; None for a sink read live."""
        if self.sink_of(spec) not in RESTARTING:
            return None
        surge, unavailable = rollout.counts(
            self.fleet.replicas, self.max_surge, self.max_unavailable
        )
        return Rollout(self.restart_s, surge, unavailable)


def with_sink(spec: StopPolicySpec, sink: str) -> StopPolicySpec:
    """``spec`` as the law sees it with the budget written to ``sink`` (only the sink's
    type matters to the law: whether a patch restarts pods)."""
    if sink == spec.budget.sink.type.value:
        return spec
    written = spec.budget.sink.model_copy(update={"type": SinkType(sink)})
    budget = spec.budget.model_copy(update={"sink": written})
    return spec.model_copy(update={"budget": budget})


def latency_slo(spec: StopPolicySpec, options: Options) -> tuple[float, str]:
    """The latency SLO in seconds and where it comes from."""
    if options.latency_slo_s is not None:
        return options.latency_slo_s, "--latency-slo"
    for sig in spec.load.signals:
        if signal_kind(sig.name) in ("latencyP95", "latencyP99"):
            return sig.target, f"target of load signal {sig.name}"
    return DEFAULT_SLO_S, "default"


@dataclass(frozen=True)
class Summary:
    """One strategy's figures (a row of results.csv)."""

    strategy: str
    tokens_per_request: float
    em: float
    #: Share of evaluation windows (with arrivals) whose requests' EM met emTarget.
    em_target_attainment: float
    #: Share of evaluation windows (with arrivals) whose requests' EM was below emFloor.
    time_below_floor: float
    p95_latency_s: float
    #: Share of requests whose end-to-end latency met the SLO.
    slo_attainment: float
    budget_changes_per_hour: float
    #: Generated tokens x policy price / 1e6; None without cost.pricePerMillionTokens.
    cost: float | None
    requests: int
    #: Mean of the budgets the requests were served at.
    mean_budget: float
    p50_latency_s: float
    max_queue: int
    #: Rolling updates started per simulated hour (0 for a sink read live).
    restarts_per_hour: float = 0.0
    #: Replica-seconds with fewer than ``replicas`` replicas taking requests (restarts).
    replica_s_lost: float = 0.0

    COLUMNS = (
        "strategy",
        "tokens_per_request",
        "em",
        "em_target_attainment",
        "time_below_floor",
        "p95_latency_s",
        "slo_attainment",
        "budget_changes_per_hour",
        "cost",
        "requests",
        "mean_budget",
        "p50_latency_s",
        "max_queue",
        "restarts_per_hour",
        "replica_s_lost",
    )

    def row(self) -> dict[str, str | float | int | None]:
        return {c: getattr(self, c) for c in self.COLUMNS}


@dataclass(frozen=True)
class Run:
    """One strategy's run."""

    name: str
    #: Budget the strategy wrote at the start of each interval.
    budgets: tuple[int, ...]
    #: Fleet signals at each tick, and the policy's pressure from them.
    signals: tuple[FleetSignals, ...]
    pressure: tuple[float, ...]
    #: EM of the requests arriving in each interval (None: no arrivals).
    interval_em: tuple[float | None, ...]
    #: Per request: generated tokens, exact match, end-to-end latency.
    generated: tuple[int, ...]
    correct: tuple[bool, ...]
    latency: tuple[float, ...]
    #: (arrived, completed, queued, running) at each tick and after the drain.
    ledger: tuple[tuple[int, int, int, int], ...]
    summary: Summary
    audits: tuple[AuditRecord, ...] = ()
    calls: tuple[LawCall, ...] = ()
    #: Per request: the budget it was served at (the one written when it arrived, or with a
    #: sink read live ``propagation_s`` later; with a rollout, its replica's template).
    served_at: tuple[int, ...] = ()
    #: Seconds from the policy's creation to the law's first decision with a curve (0 with
    #: a prior; None: never, or not the real law).
    first_evidence_s: float | None = None


@dataclass(frozen=True)
class Comparison:
    """The result of :func:`simulate`."""

    spec: StopPolicySpec
    workload: Workload
    options: Options
    start: datetime
    slo_s: float
    slo_source: str
    objective: Objective
    candidates: tuple[int, ...]
    #: Budgets of the quality file's settings.
    quality_levels: tuple[int, ...]
    served: Mapping[int, Served]
    runs: tuple[Run, ...]
    #: Seconds from an audit's start to its curve being used, and where that comes from.
    audit_duration_s: float = 300.0
    audit_duration_source: str = "--audit-duration"
    #: The cold-start run's start (``Options.cold_start``), else None.
    cold_start: ColdStart | None = None

    def run(self, name: str) -> Run:
        for r in self.runs:
            if r.name == name:
                return r
        raise KeyError(name)

    @property
    def horizon(self) -> float:
        return self.workload.intervals * self.workload.interval

    def arrival_rate(self) -> list[float]:
        """Requests per second arriving in each interval."""
        out = []
        for k in range(self.workload.intervals):
            lo, hi = self.workload.bounds(k)
            out.append((hi - lo) / self.workload.interval)
        return out


def simulate(
    trace: Trace,
    quality: QualityTable,
    spec: StopPolicySpec,
    options: Options | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Comparison:
    """Run every strategy on the trace and return their figures; deterministic per seed.

    ``progress(done, total)`` is called after every control tick of every strategy.
    """
    options = options or Options()
    cold = coldstart.at_busiest_minute(trace) if options.cold_start else None
    if cold is not None:
        trace, spec = cold.trace, coldstart.without_prior(spec)
    spec = with_sink(spec, options.sink_of(spec))
    audit_s, audit_source = audit_duration(spec, quality, options)
    kinds = signal_kinds(spec)
    slo, slo_source = latency_slo(spec, options)
    interval = spec.control.interval.total_seconds()
    workload = Workload.of(trace, quality, interval, options.time_scale, options.seed)
    low, high = spec.budget.min, spec.budget.max
    cands = candidates(quality, low, high)
    served: dict[int, Served] = {}

    def at(budget: int) -> Served:
        if budget not in served:
            served[budget] = serve(
                workload, quality, budget, spec.budget.kind, options.fleet.prefill_weight
            )
        return served[budget]

    # Cold start: the policy is created at tick ``created`` (after the warm-up); before it
    # every strategy serves budget.initial.
    created = round(cold.warmup / options.time_scale / interval) if cold is not None else 0
    objective = Objective(
        spec.quality.em_target, spec.quality.em_floor, options.fleet.capacity * interval
    )
    plan = [
        objective.best([at(c) for c in cands], *workload.bounds(k)).budget
        for k in range(workload.intervals)
    ]
    ladder = sorted(spec.audit.budgets) if spec.audit is not None else list(cands)
    strategies: list[Strategy] = [Static(b) for b in ladder]
    strategies.append(Reactive(spec, ladder, options.reactive))
    strategies.append(
        StopBudget(
            spec,
            quality,
            created=trace.start + timedelta(seconds=created * interval),
            audit_duration=audit_s,
            seed=options.seed,
            audit_every=options.audit_every_s,
        )
    )
    if options.only is not None:
        strategies = [s for s in strategies if s.name in options.only]
    strategies.append(Schedule("oracle", plan))
    total = workload.intervals * len(strategies)
    ticks = [0]

    def tick() -> None:
        ticks[0] += 1
        if progress is not None:
            progress(ticks[0], total)

    runs = tuple(
        _run(s, workload, spec, options, kinds, slo, trace.start, at, tick, created)
        for s in strategies
    )
    return Comparison(
        spec=spec,
        workload=workload,
        options=options,
        start=trace.start,
        slo_s=slo,
        slo_source=slo_source,
        objective=objective,
        candidates=cands,
        quality_levels=quality.levels,
        served=served,
        runs=runs,
        audit_duration_s=audit_s,
        audit_duration_source=audit_source,
        cold_start=cold,
    )


class _Writer:
    """The budget a strategy writes, reaching the requests through the sink: with a sink
    read live, every request arriving ``propagation_s`` after the patch is served at it;
    with a sink in the pod template, the fleet rolls its replicas (:class:`Fleet`)."""

    def __init__(self, options: Options, spec: StopPolicySpec, first: int) -> None:
        self.propagation = options.propagation_s
        self.rollout = options.rolling_update(spec)
        self.current = first
        self.written = first
        self.pending: list[tuple[float, int]] = []

    def write(self, fleet: Fleet, budget: int, t: float) -> None:
        if self.rollout is not None:
            fleet.set_template(budget, t)
        elif budget != self.written:
            self.pending.append((t + self.propagation, budget))
        self.written = budget

    def at(self, arrival: float) -> int:
        """The budget a request arriving at ``arrival`` is served at (sink read live)."""
        while self.pending and self.pending[0][0] <= arrival:
            self.current = self.pending.pop(0)[1]
        return self.current


def audit_duration(
    spec: StopPolicySpec, quality: QualityTable, options: Options
) -> tuple[float, str]:
    """Seconds from a simulated audit's start to its curve being used, and the source."""
    if options.audit_duration_s is not None:
        return options.audit_duration_s, "--audit-duration"
    if spec.audit is None:
        return 0.0, "no audit"
    a, fleet = spec.audit, options.fleet
    seconds = audit_seconds(a, quality, fleet)
    source = (
        f"modelled: {min(a.sample_size, quality.questions)} questions, method {a.method.value}, "
        f"concurrency {a.concurrency}, {fleet.rate(fleet.max_batch):.1f} tokens/s per sequence"
    )
    if seconds > a.timeout.total_seconds():
        source += (
            f"; longer than audit.timeout {format_duration(a.timeout)}: the operator would "
            "stop it (here its curve is used when it ends)"
        )
    return seconds, source


def _run(
    strategy: Strategy,
    workload: Workload,
    spec: StopPolicySpec,
    options: Options,
    kinds: list[tuple[str, float, str]],
    slo: float,
    start: datetime,
    at: Callable[[int], Served],
    tick: Callable[[], None],
    created: int = 0,
) -> Run:
    n = len(workload)
    fleet = Fleet(options.fleet, 0)  # before the first budget: empty
    writer: _Writer | None = None
    generated = [0] * n
    correct = [False] * n
    served_at = [0] * n
    budgets: list[int] = []
    signals: list[FleetSignals] = []
    pressure: list[float] = []
    ledger: list[tuple[int, int, int, int]] = []
    # Prefix sums over fleet.log (completion order), for the trailing windows.
    hits_upto, tokens_upto = [0], [0]
    live_em = spec.quality.query is not None

    def completed_within(t: float) -> Callable[[float], Window]:
        def window(seconds: float) -> Window:
            lo, hi = fleet.window(t, seconds)
            return Window(hi - lo, hits_upto[hi] - hits_upto[lo], tokens_upto[hi] - tokens_upto[lo])

        return window

    def cost(request: int, budget: int) -> tuple[float, int]:
        served = at(budget)
        return served.work[request], served.kv[request]

    interval = workload.interval
    for k in range(workload.intervals):
        t = k * interval
        now = start + timedelta(seconds=t)
        sig = fleet.signals(t)
        window = completed_within(t)
        recent = window(options.fleet.window_s)
        rates = _rates(workload, t, options.fleet.window_s, recent)
        observation = _observation(kinds, sig, recent, rates, live_em=live_em)
        ledger.append((fleet.arrived, fleet.completed, fleet.queued, fleet.running))
        signals.append(sig)
        pressure.append(observation.pressure)
        budget = (
            strategy.budget(Tick(k, t, now, sig, observation, window))
            if k >= created
            else spec.budget.start  # cold start: before the policy exists
        )
        budgets.append(budget)
        if writer is None:  # the Deployment as the strategy found it: at its first budget
            writer = _Writer(options, spec, budget)
            fleet = Fleet(options.fleet, n, writer.rollout, cost, budget)
        writer.write(fleet, budget, t)
        arrivals = _admit(workload, k, writer, at, (served_at, generated, correct))
        fleet.run(t + interval, arrivals)
        _record(fleet, at, hits_upto, tokens_upto, generated, correct, served_at)
        tick()
    fleet.drain()
    _record(fleet, at, hits_upto, tokens_upto, generated, correct, served_at)
    ledger.append((fleet.arrived, fleet.completed, fleet.queued, fleet.running))
    if isinstance(strategy, StopBudget):
        strategy.finish()
    latency = tuple(fleet.done[i] - workload.arrivals[i] for i in range(n))
    interval_em = _interval_em(workload, correct)
    lo = workload.bounds(created)[0]  # the figures count from the policy's creation
    hours = (workload.intervals - created) * workload.interval / 3600
    summary = _summary(
        strategy.name,
        spec,
        coldstart.after(workload, created),
        budgets[created:],
        served_at[lo:],
        generated[lo:],
        correct[lo:],
        latency[lo:],
        slo,
        fleet.max_queue,
        options.eval_window_s,
    )
    summary = dataclasses.replace(
        summary, restarts_per_hour=fleet.rollouts / hours, replica_s_lost=fleet.lost_s
    )
    return Run(
        name=strategy.name,
        budgets=tuple(budgets),
        signals=tuple(signals),
        pressure=tuple(pressure),
        interval_em=tuple(interval_em),
        generated=tuple(generated),
        correct=tuple(correct),
        latency=latency,
        ledger=tuple(ledger),
        summary=summary,
        audits=tuple(strategy.audits) if isinstance(strategy, StopBudget) else (),
        calls=tuple(strategy.calls) if isinstance(strategy, StopBudget) else (),
        served_at=tuple(served_at),
        first_evidence_s=_since(strategy.first_evidence(), created * interval)
        if isinstance(strategy, StopBudget)
        else None,
    )


def _observation(
    kinds: Sequence[tuple[str, float, str]],
    sig: FleetSignals,
    recent: Window,
    rates: tuple[float | None, float | None],
    *,
    live_em: bool,
) -> Observation:
    """What the operator's Prometheus reader would return at this tick."""
    arrival_rate, throughput = rates
    return Observation(
        signals=tuple(
            SignalReading(name, target, SIGNAL_KINDS[kind](sig)) for name, target, kind in kinds
        ),
        em=recent.em if live_em else None,
        arrival_rate=arrival_rate,
        throughput=throughput,
        served_tokens=recent.mean_tokens,
    )


def _admit(
    workload: Workload,
    k: int,
    writer: _Writer,
    at: Callable[[int], Served],
    outcome: tuple[list[int], list[int], list[bool]],
) -> list[tuple[float, int, float, int]]:
    """The requests arriving in interval ``k``, with their cost at the budget the sink
    serves them (during a rollout the replica they land on decides: cost filled later)."""
    served_at, generated, correct = outcome
    lo, hi = workload.bounds(k)
    arrivals = []
    for i in range(lo, hi):
        if writer.rollout is None:
            served = at(writer.at(workload.arrivals[i]))
            served_at[i] = served.budget
            generated[i] = served.generated[i]
            correct[i] = served.correct[i]
            arrivals.append((workload.arrivals[i], i, served.work[i], served.kv[i]))
        else:
            arrivals.append((workload.arrivals[i], i, 0.0, 0))
    return arrivals


def _interval_em(workload: Workload, correct: Sequence[bool]) -> list[float | None]:
    """EM of the requests that arrived in each interval (None: none arrived)."""
    em: list[float | None] = []
    for k in range(workload.intervals):
        lo, hi = workload.bounds(k)
        em.append(sum(correct[lo:hi]) / (hi - lo) if hi > lo else None)
    return em


def _rates(
    workload: Workload, t: float, seconds: float, recent: Window
) -> tuple[float | None, float | None]:
    """The queueing model's rates at ``t``, as the presets' rate queries over ``seconds``
    would read them: requests arrived per second and tokens generated per second (the
    ``recent`` completions'); None at the first tick (no window yet)."""
    span = min(seconds, t)
    if span <= 0:
        return None, None
    arrived = bisect_left(workload.arrivals, t) - bisect_left(workload.arrivals, t - span)
    return arrived / span, recent.tokens / span


def _record(
    fleet: Fleet,
    at: Callable[[int], Served],
    hits_upto: list[int],
    tokens_upto: list[int],
    generated: list[int],
    correct: list[bool],
    served_at: list[int],
) -> None:
    """Add the requests completed since the last call to the prefix sums (and, with a
    rollout, take their budget from the replica that served them)."""
    for q in fleet.log[len(hits_upto) - 1 :]:
        if fleet.rollout is not None:
            served = at(fleet.budget_of[q])
            served_at[q] = served.budget
            generated[q] = served.generated[q]
            correct[q] = served.correct[q]
        hits_upto.append(hits_upto[-1] + correct[q])
        tokens_upto.append(tokens_upto[-1] + generated[q])


def _since(t: float | None, origin: float) -> float | None:
    return None if t is None else t - origin


def _summary(
    name: str,
    spec: StopPolicySpec,
    workload: Workload,
    budgets: Sequence[int],
    served_at: Sequence[int],
    generated: Sequence[int],
    correct: Sequence[bool],
    latency: Sequence[float],
    slo: float,
    max_queue: int,
    eval_window: float,
) -> Summary:
    n = len(generated)
    weighted_budget = sum(served_at)
    met = below = nonempty = 0
    for lo, hi in evaluation_windows(workload, eval_window):
        if hi == lo:
            continue
        nonempty += 1
        hits = sum(correct[lo:hi])
        met += meets(hits, hi - lo, spec.quality.em_target)
        below += not meets(hits, hi - lo, spec.quality.em_floor)
    ordered = sorted(latency)
    hours = workload.intervals * workload.interval / 3600
    changes = sum(1 for a, b in pairwise(budgets) if a != b)
    price = spec.cost.price_per_million_tokens
    total = sum(generated)
    return Summary(
        strategy=name,
        tokens_per_request=total / n,
        em=sum(correct) / n,
        em_target_attainment=met / nonempty,
        time_below_floor=below / nonempty,
        p95_latency_s=quantile(ordered, 0.95),
        slo_attainment=sum(1 for x in latency if x <= slo) / n,
        budget_changes_per_hour=changes / hours,
        cost=None if price is None else total * price / 1e6,
        requests=n,
        mean_budget=weighted_budget / n,
        p50_latency_s=quantile(ordered, 0.5),
        max_queue=max_queue,
    )


def evaluation_windows(workload: Workload, seconds: float) -> list[tuple[int, int]]:
    """Requests ``[lo, hi)`` arriving in each evaluation window: whole control intervals,
    as many as fit in ``seconds`` (at least one)."""
    per = max(1, round(seconds / workload.interval))
    out = []
    for first in range(0, workload.intervals, per):
        last = min(first + per, workload.intervals) - 1
        out.append((workload.bounds(first)[0], workload.bounds(last)[1]))
    return out


def cheapest_static_meeting_target(comparison: Comparison) -> Run | None:
    """The static budget with the fewest tokens per request whose overall EM meets emTarget."""
    target = comparison.spec.quality.em_target
    meeting = [
        r
        for r in comparison.runs
        if r.name.startswith("static-") and r.summary.em + 1e-12 >= target
    ]
    return min(meeting, key=lambda r: r.summary.tokens_per_request, default=None)
