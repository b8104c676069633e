"""The controller's small parts: stored status, the tick's helpers, an invalid spec's tick,
the webhook's readiness, shutdown, and the mailbox (the rest runs end to end)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from stopbudget import api
from stopbudget.clients.metrics import OperatorMetrics
from stopbudget.clients.settings import Settings
from stopbudget.controller import tick
from stopbudget.controller.mailbox import PolicyMailbox
from stopbudget.controller.operator import Operator
from stopbudget.controller.tick import first_delay, interval_of, meet
from stopbudget.core.status import patch_body, read_status

ROOT = Path(__file__).resolve().parents[3]


def test_first_tick_offsets_are_stable_spread_and_bounded() -> None:
    spec = {"control": {"interval": "30s"}}
    delays = [first_delay("serving", f"policy-{i}", spec) for i in range(200)]
    assert all(0 <= d < 15 for d in delays)
    assert delays == [first_delay("serving", f"policy-{i}", spec) for i in range(200)]
    assert max(delays) - min(delays) > 10  # spread over the half interval
    assert first_delay("serving", "p", {"control": {"interval": "soon"}}) < 15


def test_interval_of_a_spec_that_may_be_invalid() -> None:
    assert interval_of({"control": {"interval": "5s"}}) == 5.0
    assert interval_of({"control": {"interval": "0s"}}) == 30.0  # out of bounds
    assert interval_of({"control": "nonsense"}) == 30.0
    assert interval_of({}) == 30.0


# ------------------------------------------------------------------ the status as stored

STORED = {
    "budget": 256,
    "originalValue": {"present": True, "value": "2048"},
    "failures": 2,
    "history": [{"time": "2026-01-01T00:00:00Z", "budget": 256}],
    "lastPatchTime": "2026-01-01T00:00:00Z",
    "signals": {"queue": 3.5},
}


@pytest.mark.parametrize(
    ("broken", "value"),
    [
        ("signals", {"queue": None}),  # a merge patch's null, read back as status
        ("conditions", "nonsense"),
        ("futureField", {"from": "a newer operator"}),
    ],
)
def test_an_unreadable_field_costs_that_field_only(broken: str, value: object) -> None:
    stored = read_status({**STORED, broken: value})
    assert stored.unreadable == {broken}
    status = stored.status
    assert status.original_value == api.OriginalValue(present=True, value="2048")
    assert status.failures == 2
    assert status.budget == 256
    assert [h.budget for h in status.history] == [256]
    assert status.last_patch_time is not None
    # Written back, the unreadable field is left as stored: never erased.
    assert broken not in patch_body(status, stored)
    assert patch_body(status, stored)["originalValue"] == {"present": True, "value": "2048"}


def test_each_unreadable_field_is_dropped_and_nothing_else() -> None:
    stored = read_status({"budget": "many", "failures": -1})
    assert stored.unreadable == {"budget", "failures"}
    assert stored.status.budget is None
    assert read_status(None).status == api.StopPolicyStatus()


def test_removed_signals_are_deleted_by_the_patch_and_absent_when_read_back() -> None:
    stored = read_status(STORED)
    body = patch_body(stored.status.model_copy(update={"signals": {}}), stored)
    assert body["signals"] == {"queue": None}


def test_an_unreadable_curve_is_replaced_not_kept() -> None:
    """A point this version cannot read (a curve stored before n became samples)."""
    stored = read_status({**STORED, "curve": [{"budget": 128, "em": 0.5}]})
    assert stored.unreadable == {"curve"}
    assert stored.status.curve == []
    assert patch_body(stored.status, stored)["curve"] == []
    assert patch_body(stored.status, stored)["originalValue"] == {"present": True, "value": "2048"}


# ------------------------------------------------------ policies from before n became samples


def _pre_rename_policy() -> tuple[dict[str, Any], dict[str, Any]]:
    """A policy and status stored with ``n``, as the API server returns them after the new CRD.

    It prunes what its schema does not know (``n``, on reading too), so the prior
    items and the audited curve have no sample count (measured on kube-apiserver
    1.28.7: see the README, Upgrading).
    """
    doc = yaml.safe_load((ROOT / "examples" / "recommend-mode.yaml").read_text(encoding="utf-8"))
    spec: dict[str, Any] = doc["spec"]
    for item in spec["quality"]["prior"]:
        del item["samples"]
    status = {
        "budget": 512,
        "curveSource": "audit",
        "curve": [{"budget": 256, "em": 0.6, "lower": 0.55}],
        "originalValue": {"present": True, "value": "1024"},
    }
    return spec, status


class StatusRecorder:
    """The one Kubernetes call a tick of an invalid spec makes: the status write."""

    def __init__(self) -> None:
        self.written: dict[str, Any] = {}

    async def patch_policy_status(
        self, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        self.written = dict(status)
        return {"status": {k: v for k, v in status.items() if v is not None}}


@pytest.mark.parametrize(
    ("old_key", "expected"),
    [
        pytest.param(None, "samples: Field required: samples was called n", id="pruned"),
        # A server that keeps unknown fields (kmock's emulator) hands n over as it was.
        pytest.param("n", "n: n is now called samples: write samples: 300 instead", id="kept"),
    ],
)
def test_an_old_n_is_an_invalid_spec_that_names_samples_and_n(
    old_key: str | None, expected: str
) -> None:
    spec, status = _pre_rename_policy()
    if old_key is not None:
        for item in spec["quality"]["prior"]:
            item[old_key] = 300
    now = datetime(2025, 1, 1, tzinfo=UTC)
    kube = StatusRecorder()
    operator = Operator(
        settings=Settings(), kube=kube, reader=None, metrics=OperatorMetrics(), clock=lambda: now
    )  # type: ignore[arg-type]  # an invalid spec reaches Kubernetes for its status only
    mailbox = PolicyMailbox("serving", "qwen")

    result = asyncio.run(tick.tick(operator, mailbox, {"generation": 2}, spec, status))
    written = kube.written  # the tick writes the status itself

    ready = next(c for c in written["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    for i in range(3):
        assert f"spec.quality.prior[{i}].{expected}" in ready["message"]
    assert ready["message"].count("spec.quality.prior") == 3
    assert [e.reason for e in result.events] == ["InvalidSpec"]
    # The unreadable curve is replaced whole (kept, it would make the API server refuse
    # the write), and what is restored on delete is kept.
    assert written["curve"] == []
    assert written["originalValue"] == {"present": True, "value": "1024"}
    assert written["budget"] == 512


# ------------------------------------------------------------------ the webhook's readiness


async def test_the_webhook_is_ready_once_every_listed_policy_is_met() -> None:
    operator = Operator(
        settings=Settings(),
        kube=None,
        reader=None,
        metrics=OperatorMetrics(),  # type: ignore[arg-type]
    )
    operator.settle_deadline = asyncio.get_running_loop().time() + 60
    assert not operator.webhook_ready()  # not listed yet
    operator.expected = {("serving", "a"), ("serving", "b"), ("serving", "gone")}
    spec = {"targetRef": {"name": "vllm"}, "budget": {"min": 1, "max": 8, "sink": {"type": "env",
            "name": "M"}}, "quality": {"emTarget": 0.8, "emFloor": 0.7}}  # fmt: skip
    meet(operator.mailbox("serving", "a"), spec, None)
    assert operator.mailboxes["serving", "a"].target is not None  # matchable before its tick
    meet(operator.mailbox("serving", "b"), {"budget": "invalid"}, None)  # met, not matchable
    assert operator.mailboxes["serving", "b"].target is None
    assert not operator.webhook_ready()
    await operator.forget("serving", "gone")  # deleted before its daemon started
    assert operator.webhook_ready()


async def test_the_webhook_stops_waiting_at_the_deadline() -> None:
    operator = Operator(
        settings=Settings(),
        kube=None,
        reader=None,
        metrics=OperatorMetrics(),  # type: ignore[arg-type]
    )
    operator.expected = {("serving", "never-met")}
    operator.settle_deadline = asyncio.get_running_loop().time() + 60
    assert not operator.webhook_ready()
    operator.settle_deadline = asyncio.get_running_loop().time() - 1
    assert operator.webhook_ready()


async def test_close_waits_for_the_ticks_in_flight_and_starts_no_more() -> None:
    closed: list[str] = []

    class Client:
        async def close(self) -> None:
            closed.append("kube")

    class Reader:
        def close(self) -> None:
            closed.append("prometheus")

    operator = Operator(
        settings=Settings(),
        kube=Client(),
        reader=Reader(),
        metrics=OperatorMetrics(),  # type: ignore[arg-type]
    )
    entered, release = asyncio.Event(), asyncio.Event()

    async def tick() -> None:
        async with operator.ticking() as open_:
            assert open_
            entered.set()
            await release.wait()
            assert closed == []  # the clients stay open while a tick uses them

    running = asyncio.create_task(tick())
    await entered.wait()
    closing = asyncio.create_task(operator.close())
    await asyncio.sleep(0)
    async with operator.ticking() as open_:
        assert not open_  # no new tick once closing
    release.set()
    await asyncio.gather(running, closing)
    assert closed == ["kube", "prometheus"]


def test_an_audit_request_already_consumed_is_not_a_new_one() -> None:
    """The watched object can still show the annotation for a tick after the operator removed
    it (seen on the real API server: a manual audit ran twice)."""
    runtime = PolicyMailbox("serving", "p")
    asked = {api.ANNOTATION_AUDIT_REQUESTED: "please", "other": "kept"}
    assert runtime.requests_in(asked) == asked  # a new request
    runtime.consumed_request = "please"  # the tick started its audit and removed it
    assert runtime.requests_in(asked) == {"other": "kept"}  # a stale view of the object
    assert runtime.requests_in({"other": "kept"}) == {"other": "kept"}  # seen gone
    assert runtime.consumed_request is None
    assert runtime.requests_in(asked) == asked  # asked again: a new request
    runtime.consumed_request = "please"
    again = {api.ANNOTATION_AUDIT_REQUESTED: "2026-12-02T03:00"}
    assert runtime.requests_in(again) == again  # another value is always a new request
