"""Small pure helpers of the reconcile layer (the tick itself is tested end to end)."""

from __future__ import annotations

from stopbudget.reconcile import _raw_interval, first_delay


def test_first_tick_offsets_are_stable_spread_and_bounded() -> None:
    spec = {"control": {"interval": "30s"}}
    delays = [first_delay("serving", f"policy-{i}", spec) for i in range(200)]
    assert all(0 <= d < 15 for d in delays)
    assert delays == [first_delay("serving", f"policy-{i}", spec) for i in range(200)]
    assert max(delays) - min(delays) > 10  # spread over the half interval
    assert first_delay("serving", "p", {"control": {"interval": "soon"}}) < 15


def test_interval_of_a_spec_that_may_be_invalid() -> None:
    assert _raw_interval({"control": {"interval": "5s"}}) == 5.0
    assert _raw_interval({"control": {"interval": "0s"}}) == 30.0  # out of bounds
    assert _raw_interval({"control": "nonsense"}) == 30.0
    assert _raw_interval({}) == 30.0
