"""The simulator's restarts: the rolling update (pure), the fleet under it, the sinks."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from stopbudget.sim import rollout
from stopbudget.sim.engine import Comparison, Options, simulate
from stopbudget.sim.fleet import Fleet, FleetConfig, Rollout
from stopbudget.sim.inputs import QualityTable, Trace, load_quality, load_trace
from stopbudget.sim.rollout import Pod, Step
from stopbudget.sim.strategies import ReactiveConfig
from tests.support import sim_fleet_reference

ROOT = Path(__file__).resolve().parents[3]
CONV = ROOT / "data/traces/AzureLLMInferenceTrace_conv.csv"
FRAMES = ROOT / "data/quality/wide_gemini-2.5-flash_frames.csv"

# ---------------------------------------------------------------- maxSurge, maxUnavailable


@pytest.mark.parametrize(
    ("replicas", "surge", "unavailable", "expected"),
    [
        (4, "25%", "25%", (1, 1)),
        (2, "25%", "25%", (1, 0)),  # surge rounds up, unavailable down
        (1, "25%", "25%", (1, 0)),
        (10, "25%", "25%", (3, 2)),
        (3, "0", "25%", (0, 1)),  # both round to 0: maxUnavailable 1, as Kubernetes
        (3, "0%", "10%", (0, 1)),
        (5, "1", "0", (1, 0)),
        (3, "50%", "50%", (2, 1)),
        (4, "100%", "0", (4, 0)),
        (2, " 2 ", "1", (2, 1)),
    ],
)
def test_counts_round_as_kubernetes(
    replicas: int, surge: str, unavailable: str, expected: tuple[int, int]
) -> None:
    assert rollout.counts(replicas, surge, unavailable) == expected


@pytest.mark.parametrize(
    ("surge", "unavailable", "message"),
    [
        ("0", "0", "both 0"),
        ("0%", "0", "both 0"),
        ("abc", "1", "--max-surge 'abc' is neither a count nor a percentage"),
        ("1", "-1", "--max-unavailable '-1' is neither"),
        ("150%", "1", "--max-surge '150%': a percentage is at most 100%"),
        ("1.5", "1", "--max-surge '1.5' is neither"),
    ],
)
def test_counts_reject_what_kubernetes_rejects(surge: str, unavailable: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        rollout.counts(4, surge, unavailable)


# ---------------------------------------------------------------- one step of the rollout


def _pods(*spec: tuple[int, bool]) -> list[Pod]:
    return [Pod(i, template, ready) for i, (template, ready) in enumerate(spec)]


A, B, C = 100, 200, 300


@pytest.mark.parametrize(
    ("pods", "newest", "replicas", "surge", "unavailable", "expected"),
    [
        # Nothing to do: every pod has the newest template.
        (_pods((A, True), (A, True)), A, 2, 1, 0, Step(0, ())),
        # A patch: surge one new pod, keep both old ones (maxUnavailable 0).
        (_pods((A, True), (A, True)), B, 2, 1, 0, Step(1, ())),
        # The new pod is ready: the oldest pod drains, the next new one starts.
        (_pods((A, True), (A, True), (B, True)), B, 2, 1, 0, Step(1, (0,))),
        # maxSurge 0: one old pod goes first, then its replacement starts.
        (_pods((A, True), (A, True)), B, 2, 0, 1, Step(1, (0,))),
        # Big surge, no unavailable: all new pods at once.
        (_pods((A, True), (A, True), (A, True)), B, 3, 3, 0, Step(3, ())),
        # A patch during a rollout: the pod of the intermediate template (not ready)
        # goes, one of the newest starts.
        (_pods((A, True), (A, True), (B, False)), C, 2, 1, 0, Step(1, (2,))),
        # Written back to the template that still runs: the rollout simply ends.
        (_pods((A, True), (A, True), (B, False)), A, 2, 1, 0, Step(0, (2,))),
        # Written back with more pods of it than replicas: the extra one goes.
        (_pods((A, True), (A, True), (A, True)), A, 2, 1, 0, Step(0, (2,))),
        # The end of a rollout: the last old pod drains once the last new one is ready.
        (_pods((A, True), (B, True), (B, True)), B, 2, 1, 0, Step(0, (0,))),
    ],
)
def test_one_step_of_the_rolling_update(
    pods: list[Pod], newest: int, replicas: int, surge: int, unavailable: int, expected: Step
) -> None:
    assert rollout.step(pods, newest, replicas, surge, unavailable) == expected


# ---------------------------------------------------------------- the fleet under rollouts

_CONFIG = FleetConfig(replicas=1, max_batch=4, step_base_s=0.01, step_per_seq_s=0.002)


def _cost(request: int, budget: int) -> tuple[float, int]:
    """Work grows with the budget (and varies per request); KV fits a few per replica."""
    return float(budget // 10 + request % 7 * 5), budget + 100 * (request % 3)


@st.composite
def _scenarios(
    draw: st.DrawFn,
) -> tuple[FleetConfig, Rollout, list[float], list[tuple[float, int]]]:
    replicas = draw(st.integers(1, 5))
    surge = draw(st.integers(0, 3))
    unavailable = draw(st.integers(0, replicas))
    assume(surge + unavailable > 0)
    restart = draw(st.sampled_from([0.0, 0.5, 3.0, 20.0]))
    config = dataclasses.replace(
        _CONFIG, replicas=replicas, kv_tokens=draw(st.sampled_from([2_000, 250_000]))
    )
    arrivals = sorted(draw(st.lists(st.floats(0, 60, allow_nan=False), max_size=60)))
    patches = sorted(
        draw(
            st.lists(
                st.tuples(st.floats(0, 60, allow_nan=False), st.sampled_from([A, B, C])),
                max_size=8,
            )
        )
    )
    return config, Rollout(restart, surge, unavailable), arrivals, patches


def _play(
    config: FleetConfig, spec: Rollout, arrivals: list[float], patches: list[tuple[float, int]]
) -> Fleet:
    """Arrivals and patches, in time order (a patch first at the same instant), then a drain."""
    fleet = Fleet(config, len(arrivals), spec, _cost, A)
    events = sorted([(t, 0, b) for t, b in patches] + [(t, 1, i) for i, t in enumerate(arrivals)])
    for t, kind, value in events:
        if kind == 0:
            fleet.run(t, [])
            fleet.set_template(value, t)
        else:
            fleet.run(math.nextafter(t, math.inf), [(t, value, 0.0, 0)])
    fleet.drain()
    return fleet


@settings(max_examples=150, deadline=None)
@given(_scenarios())
@example(  # a request starts on a pod the instant before a patch replaces it: it drains
    (
        dataclasses.replace(_CONFIG, kv_tokens=2_000),
        Rollout(0.5, 0, 1),
        [0.0],
        [(0.0, B), (0.5, A)],
    )
)
def test_a_rollout_keeps_its_promises(
    scenario: tuple[FleetConfig, Rollout, list[float], list[tuple[float, int]]],
) -> None:
    config, spec, arrivals, patches = scenario
    fleet = _play(config, spec, arrivals, patches)
    n = len(arrivals)
    # Every request completes, on a replica that was up: ready when it started, not yet
    # draining, and still there until it finished; at that replica's budget.
    assert fleet.completed == fleet.arrived == n
    for q in range(n):
        pod = fleet.pods[fleet.replica_of[q]]
        assert pod.ready_at <= fleet.started[q] <= pod.stop_at
        assert pod.stop_order < 0 or fleet.start_order[q] < pod.stop_order
        assert fleet.arrival[q] <= fleet.started[q] <= fleet.done[q]
        assert fleet.done[q] <= fleet.gone.get(pod.id, math.inf)
        assert fleet.budget_of[q] == pod.template
    # Capacity never below replicas - maxUnavailable (Kubernetes' minAvailable).
    assert min(count for _, count in fleet.serving_log) >= config.replicas - spec.max_unavailable
    # Restarts cost capacity only when pods may be unavailable and take time to start.
    if spec.max_unavailable == 0 or spec.restart_s == 0:
        assert fleet.lost_s == 0
    assert fleet.lost_s <= config.replicas * max(fleet.now, 1.0)
    changes = sum(1 for (_, a), (_, b) in zip([(0, A), *patches], patches, strict=False) if a != b)
    assert fleet.rollouts == changes
    # The rollout converges: a while after the last patch, every replica runs the newest.
    settle = (patches[-1][0] if patches else 0.0) + (config.replicas + 1) * spec.restart_s + 1
    fleet.run(max(settle, fleet.now), [])
    up = [fleet.pods[r] for r in fleet.pods if r not in fleet.gone]
    assert len(up) == fleet.serving == config.replicas
    assert {p.template for p in up} == {fleet.newest}


@settings(max_examples=60, deadline=None)
@given(_scenarios())
def test_with_max_surge_zero_capacity_never_drops_below_replicas_minus_max_unavailable(
    scenario: tuple[FleetConfig, Rollout, list[float], list[tuple[float, int]]],
) -> None:
    config, spec, arrivals, patches = scenario
    unavailable = max(spec.max_unavailable, 1)
    spec = Rollout(spec.restart_s, 0, unavailable)
    fleet = _play(config, spec, arrivals, patches)
    settle = (patches[-1][0] if patches else 0.0) + (config.replicas + 1) * spec.restart_s + 1
    fleet.run(max(settle, fleet.now), [])
    assert min(c for _, c in fleet.serving_log) >= config.replicas - unavailable
    if patches and spec.restart_s > 0 and any(b != A for _, b in patches):
        assert fleet.lost_s > 0  # without surge, a rollout takes a replica down


def test_a_rollout_by_hand() -> None:
    """Two replicas, maxSurge 1, maxUnavailable 0, 10 s to start a pod: the request in
    flight on the pod that goes is drained (finished, never cut), the oldest pod goes
    first, and once both new pods are up every request is served at the new budget."""
    config = FleetConfig(replicas=2, max_batch=8, step_base_s=0.01, step_per_seq_s=0.0)
    fleet = Fleet(config, 3, Rollout(10.0, 1, 0), lambda q, b: (float(b), 10), A)
    fleet.run(2.0, [(0.0, 0, 0.0, 0)])  # 100 tokens at 100 tokens/s: done at 1.0
    fleet.set_template(B, 2.0)  # pod 2 (B) starts: ready at 12
    assert (fleet.serving, fleet.rollouts) == (2, 1)
    fleet.run(12.0, [(11.5, 1, 0.0, 0)])  # on pod 0, at A: done at 12.5
    assert fleet.replica_of[1] == 0
    assert fleet.serving == 2
    fleet.run(23.0, [(22.5, 2, 0.0, 0)])  # pod 3 (B) ready at 22: only B pods take it
    fleet.drain()
    assert fleet.budget_of == [A, A, B]
    assert fleet.done == [pytest.approx(1.0), pytest.approx(12.5), pytest.approx(24.5)]
    assert fleet.pods[0].stop_at == pytest.approx(12.0)  # pod 0 drained from 12 to 12.5
    assert fleet.gone == {0: pytest.approx(12.5), 1: pytest.approx(22.0)}
    assert {fleet.pods[i].template for i in (2, 3)} == {B}
    assert fleet.lost_s == 0
    assert min(c for _, c in fleet.serving_log) == 2


# ---------------------------------------------------------------- the simulator's sinks

_POLICY = {
    "apiVersion": "stopbudget.io/v1alpha1",
    "kind": "StopPolicy",
    "metadata": {"name": "sim", "namespace": "test"},
    "spec": {
        "targetRef": {"name": "gateway"},
        "budget": {
            "min": 256,
            "max": 2048,
            "initial": 1024,
            "kind": "thinking",
            "sink": {"type": "configMap", "configMapName": "limits", "name": "budget"},
        },
        "quality": {
            "emTarget": 0.44,
            "emFloor": 0.38,
            "minSamples": 50,
            "query": "live_em",
            "prior": [
                {"budget": 256, "em": 0.3277, "samples": 824},
                {"budget": 512, "em": 0.4502, "samples": 824},
                {"budget": 1024, "em": 0.5061, "samples": 824},
                {"budget": 2048, "em": 0.5097, "samples": 824},
            ],
        },
        "load": {
            "preset": "vllm",
            "signals": [{"name": "queue", "target": 8}, {"name": "latencyP95", "target": 60}],
        },
        "control": {"interval": "10s", "cooldown": "0s", "downscaleStabilization": "20s"},
        "audit": {
            "endpoint": "http://gateway:8000",
            "model": "m",
            "dataset": {"configMapRef": {"name": "golden"}},
            "budgets": [256, 512, 1024, 2048],
            "sampleSize": 400,
        },
    },
}


@pytest.fixture(scope="module")
def trace() -> Trace:
    return load_trace(CONV).head(700)


@pytest.fixture(scope="module")
def quality() -> QualityTable:
    return load_quality(FRAMES)


def _options(**changes: object) -> Options:
    base = Options(
        fleet=FleetConfig(replicas=2, max_batch=24),
        time_scale=0.5,
        audit_every_s=30.0,
        audit_duration_s=10.0,
        reactive=ReactiveConfig(window_s=30.0),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def _run(trace: Trace, quality: QualityTable, **changes: object) -> Comparison:
    from stopbudget import api

    spec = api.StopPolicy.model_validate(_POLICY).spec
    return simulate(trace, quality, spec, _options(**changes))


def test_instantaneous_sinks_reproduce_the_instantaneous_model(
    trace: Trace, quality: QualityTable
) -> None:
    """Oracle: with propagation 0, every run is the instantaneous model -- the budgets it
    wrote, each applied to the requests of its interval, replayed through the fleet as it
    was before restarts were charged (tests/support/sim_fleet_reference.py) give the same
    latencies, tokens and answers."""
    comparison = _run(trace, quality, propagation_s=0.0, restart_s=0.0)
    w = comparison.workload
    changed = 0
    for run in comparison.runs:
        fleet = sim_fleet_reference.Fleet(comparison.options.fleet, len(w))  # type: ignore[arg-type]
        for k, budget in enumerate(run.budgets):
            served = comparison.served[budget]
            lo, hi = w.bounds(k)
            arrivals = [(w.arrivals[i], i, served.work[i], served.kv[i]) for i in range(lo, hi)]
            fleet.run((k + 1) * w.interval, arrivals)
            assert run.generated[lo:hi] == served.generated[lo:hi]
            assert run.correct[lo:hi] == served.correct[lo:hi]
        fleet.drain()
        assert run.latency == tuple(fleet.done[i] - w.arrivals[i] for i in range(len(w)))
        assert (run.summary.restarts_per_hour, run.summary.replica_s_lost) == (0, 0)
        changed += run.summary.budget_changes_per_hour > 0
    assert changed >= 2  # the test has strategies that patch


@pytest.mark.parametrize("sink", ["configMap", "aiGateway", "annotation"])
def test_a_sink_read_live_never_restarts_nor_loses_capacity(
    trace: Trace, quality: QualityTable, sink: str
) -> None:
    comparison = _run(trace, quality, sink=sink, propagation_s=2.0)
    w = comparison.workload
    for run in comparison.runs:
        assert run.summary.restarts_per_hour == 0
        assert run.summary.replica_s_lost == 0
        # A request arriving within 2 s of a patch is served at the budget before it.
        for k, budget in enumerate(run.budgets):
            lo, hi = w.bounds(k)
            before = run.budgets[k - 1] if k else budget
            for i in range(lo, hi):
                late = w.arrivals[i] >= k * w.interval + 2.0
                assert run.served_at[i] == (budget if late else before), (run.name, i)


def test_a_sink_in_the_pod_template_is_charged_restarts(
    trace: Trace, quality: QualityTable
) -> None:
    live = _run(trace, quality, sink="configMap")
    rolled = _run(trace, quality, sink="arg", max_surge="0", max_unavailable="1")
    for run in rolled.runs:
        s = run.summary
        if run.name.startswith("static-"):  # never patched: exactly the same run
            assert dataclasses.astuple(s) == dataclasses.astuple(live.run(run.name).summary)
        else:
            hours = rolled.horizon / 3600
            assert s.restarts_per_hour * hours == pytest.approx(
                sum(1 for a, b in zip(run.budgets, run.budgets[1:], strict=False) if a != b)
            )
    patched = [r for r in rolled.runs if r.summary.restarts_per_hour > 0]
    assert patched
    assert all(r.summary.replica_s_lost > 0 for r in patched)


def test_the_cli_takes_the_sink_and_rollout_flags() -> None:
    args = [
        "--trace", str(CONV), "--quality", str(FRAMES),
        "--policy", str(ROOT / "benchmarks/policy.yaml"), "--head", "300", "--no-progress",
    ]  # fmt: skip
    ok = subprocess.run(
        [sys.executable, "-m", "stopbudget", "simulate", *args, "--sink", "env",
         "--max-surge", "1", "--max-unavailable", "50%", "--restart-seconds", "30"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert "sink env: in the pod template" in ok.stdout
    assert "| restarts/h | replica-s lost |" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "stopbudget", "simulate", *args,
         "--max-surge", "0", "--max-unavailable", "0%"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert bad.returncode == 1
    assert "--max-surge and --max-unavailable are both 0" in bad.stderr
    wrong = subprocess.run(
        [sys.executable, "-m", "stopbudget", "simulate", *args, "--max-surge", "lots"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert wrong.returncode == 2
    assert "--max-surge 'lots'" in wrong.stderr


def test_the_sinks_the_simulator_and_its_cli_name_are_the_apis() -> None:
    """--sink's choices, the simulator's list and the API's sink types are one set."""
    from stopbudget.api import SinkType
    from stopbudget.cli.simulate import SINK_CHOICES
    from stopbudget.sim.engine import SINKS

    assert set(SINK_CHOICES) == set(SINKS) == {s.value for s in SinkType}
