"""The simulator's cold start (``--cold-start``) and its audit duration model."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stopbudget import api
from stopbudget.cli import simulate as simulate_command
from stopbudget.sim import coldstart, report
from stopbudget.sim.engine import Options, simulate
from stopbudget.sim.fleet import FleetConfig
from stopbudget.sim.inputs import QualityTable, Trace, load_quality, load_trace
from stopbudget.sim.strategies import audit_seconds
from tests.unit.sim.test_sim import CONV, FRAMES, OPTIONS, POLICY, _spec

START = datetime(2024, 1, 1, tzinfo=UTC)


def _trace(arrivals: list[float]) -> Trace:
    n = len(arrivals)
    return Trace("t", START, tuple(arrivals), tuple(range(n)), tuple(range(n)))


@pytest.mark.parametrize(
    ("arrivals", "expected"),
    [
        ([0, 1, 2, 61, 62, 63, 64], (1, 4)),
        ([0, 1, 61, 62], (0, 2)),  # a tie: the earliest minute
        ([0, 30, 59.999, 60, 200, 201, 202], (0, 3)),
        ([5], (0, 1)),
    ],
)
def test_busiest_minute(arrivals: list[float], expected: tuple[int, int]) -> None:
    assert coldstart.busiest_minute(_trace(arrivals)) == expected


def test_an_hour_from_the_busiest_minute_repeats_the_trace_after_its_end() -> None:
    trace = _trace([0.0, 10.0, 70.0, 130.0, 170.0])  # span 170 s: a period of 3 minutes
    hour, wrapped = coldstart.from_minute(trace, 2, length=300.0)
    assert wrapped
    assert hour.start == START + timedelta(minutes=2)
    assert hour.arrivals == (10.0, 50.0, 60.0, 70.0, 130.0, 190.0, 230.0, 240.0, 250.0)
    assert hour.context == (3, 4, 0, 1, 2, 3, 4, 0, 1)
    inside, wrapped = coldstart.from_minute(trace, 1, length=60.0)
    assert not wrapped
    assert inside.arrivals == (10.0,)


def test_a_window_before_the_trace_takes_the_repetition_before_it() -> None:
    trace = _trace([0.0, 10.0, 70.0, 130.0, 170.0])
    run, wrapped = coldstart.window(trace, -60.0, 120.0, "w")
    assert wrapped
    assert run.start == START - timedelta(minutes=1)
    assert run.arrivals == (10.0, 50.0, 60.0, 70.0)
    assert run.context == (3, 4, 0, 1)


@settings(max_examples=100, deadline=None)
@given(
    arrivals=st.lists(st.floats(0, 7200, allow_nan=False), min_size=1, max_size=60).map(sorted),
    length=st.floats(1, 7200, allow_nan=False),
)
def test_a_cold_start_window_is_a_trace_of_its_length(arrivals: list[float], length: float) -> None:
    trace = _trace(arrivals)
    minute, _ = coldstart.busiest_minute(trace)
    hour, _ = coldstart.from_minute(trace, minute, length)
    assert list(hour.arrivals) == sorted(hour.arrivals)
    assert all(0 <= t < length for t in hour.arrivals)
    # The busiest minute's own requests come first, all of them.
    first = [t for t in arrivals if minute * 60 <= t < minute * 60 + min(60, length)]
    assert len([t for t in hour.arrivals if t < min(60, length)]) == len(first)


def test_without_prior_drops_only_the_prior() -> None:
    spec = _spec()
    cold = coldstart.without_prior(spec)
    assert cold.quality.prior == []
    assert cold.quality.em_target == spec.quality.em_target
    assert cold.model_dump(exclude={"quality"}) == spec.model_dump(exclude={"quality"})


@pytest.fixture(scope="module")
def quality() -> QualityTable:
    return load_quality(FRAMES)


def test_audit_duration_model(quality: QualityTable) -> None:
    audit = _spec().audit
    assert audit is not None
    fleet = FleetConfig()
    direct = audit_seconds(audit, quality, fleet)
    truncate = audit_seconds(audit.model_copy(update={"method": "truncate"}), quality, fleet)
    wider = audit_seconds(audit.model_copy(update={"concurrency": 8}), quality, fleet)
    assert direct > truncate > 0  # direct generates at every budget, truncate at the largest
    assert wider == pytest.approx(direct / 2)
    per_seq = fleet.rate(fleet.max_batch)
    mean_2048 = sum(quality.tokens[-1]) / quality.questions  # the file's largest setting
    expected = 400 * mean_2048 / (audit.concurrency * per_seq)
    assert truncate == pytest.approx(expected)


def test_cold_start_run_audits_at_creation_under_overload(quality: QualityTable) -> None:
    """No prior, created at the busiest minute of a slice that overloads one replica: the
    first audit (cold-start) starts at the first tick, and the time to first evidence is
    its duration rounded up to a tick."""
    trace = load_trace(CONV).head(900)
    doc = copy.deepcopy(POLICY)
    doc["spec"]["audit"]["schedule"] = "0 3 * * *"
    options = dataclasses.replace(
        OPTIONS, audit_every_s=None, audit_duration_s=45.0, only=("stopbudget",), cold_start=True
    )
    comparison = simulate(trace, quality, _spec(doc), options)
    assert comparison.spec.quality.prior == []
    cold = comparison.cold_start
    assert cold is not None
    assert cold.minute == coldstart.busiest_minute(trace)[0]
    run = comparison.run("stopbudget")
    interval = comparison.workload.interval
    created = run.calls[0].t  # the law's first tick: after the warm-up
    assert created == round(coldstart.WARMUP / OPTIONS.time_scale / interval) * interval
    assert set(run.budgets[: int(created / interval)]) == {1024}  # budget.initial before
    assert run.audits[0].started == created
    assert run.audits[0].trigger == api.AuditTrigger.SPEC_CHANGE  # a new policy
    assert run.pressure[int(created / interval)] > 1  # created while overloaded
    assert run.first_evidence_s == math.ceil(45.0 / interval) * interval
    before = [c for c in run.calls if c.t < created + 45.0]
    assert before
    assert all(c.decision.rule == "no_evidence" for c in before)
    assert all(c.decision.rule != "no_evidence" for c in run.calls[len(before) :])
    # The figures count from the creation: the warm-up's requests are left out.
    arrived = comparison.workload.bounds(int(created / interval))[0]
    assert run.summary.requests == len(comparison.workload) - arrived
    text = report.header(comparison)
    assert "time to first evidence (creation to the first decision with a curve): 50s" in text
    assert f"minute {cold.minute} of the trace" in text


def test_with_a_prior_the_evidence_is_there_at_creation(quality: QualityTable) -> None:
    trace = load_trace(CONV).head(300)
    comparison = simulate(trace, quality, _spec(), Options(only=("stopbudget",)))
    assert comparison.run("stopbudget").first_evidence_s == 0.0
    assert comparison.cold_start is None
    assert "audits take 300s from start to use (--audit-duration)" in report.header(comparison)


def test_the_command_line_options(capsys: pytest.CaptureFixture[str]) -> None:
    top = argparse.ArgumentParser(prog="stopbudget")
    simulate_command.add_parser(top.add_subparsers(dest="command"))
    base = ["simulate", "--trace", "t", "--quality", "q", "--policy", "p"]
    args = top.parse_args([*base, "--cold-start", "--audit-duration", "model"])
    assert (args.cold_start, args.audit_duration) == (True, None)
    args = top.parse_args([*base, "--audit-duration", "90s"])
    assert (args.cold_start, args.audit_duration) == (False, 90.0)
    with pytest.raises(SystemExit):
        top.parse_args([*base, "--audit-duration", "soon"])
    assert "or 'model' (from the audit's work)" in capsys.readouterr().err
