"""core/audits/alerts.py: Alertmanager notifications, pure — parsing and validation,
matching to policies, dedupe and planning (the HTTP server: tests/unit/clients/test_webhook.py)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stopbudget.api import AlertRecord, AlertStatus, StopPolicySpec
from stopbudget.core.audits.alerts import (
    DedupeConfig,
    Outcome,
    PayloadError,
    PolicyIndex,
    PolicyTarget,
    WebhookAlert,
    expire,
    firing,
    match_policies,
    observe,
    parse_payload,
    plan_payload,
    selects,
)

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
LLAMA = PolicyTarget("serving", "llama", raise_budget_on_firing=True)
MISTRAL = PolicyTarget("serving", "mistral", match_labels={"model": "mistral", "team": "ml"})
NO_AUDIT = PolicyTarget("serving", "bare", auditable=False)
TARGETS = (LLAMA, MISTRAL, NO_AUDIT)


def alert_doc(
    fingerprint: str = "1a30ba71cca2921f",
    *,
    status: str = "firing",
    starts_at: str = "2024-05-01T11:58:45.739266876+02:00",
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "status": status,
        "labels": labels
        if labels is not None
        else {"alertname": "StopBudgetEMLow", "stoppolicy": "llama", "namespace": "serving"},
        "annotations": {"summary": "live EM below the floor"},
        "startsAt": starts_at,
        "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else "2024-05-01T12:30:00Z",
        "generatorURL": "http://prometheus:9090/graph?g0.expr=x",
        "fingerprint": fingerprint,
    }


def payload_doc(*alerts: dict[str, Any], status: str = "firing") -> dict[str, Any]:
    alerts = alerts or (alert_doc(),)
    return {
        "receiver": "stopbudget",
        "status": status,
        "alerts": list(alerts),
        "groupLabels": {"alertname": "StopBudgetEMLow"},
        "commonLabels": {"alertname": "StopBudgetEMLow"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "version": "4",
        "groupKey": '{}:{alertname="StopBudgetEMLow"}',
        "truncatedAlerts": 0,
    }


def encode(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def wire_alert(fingerprint: str = "1a30ba71cca2921f", **kw: Any) -> WebhookAlert:
    return WebhookAlert.model_validate(alert_doc(fingerprint, **kw))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)


# --------------------------------------------------------------------------- parsing


def test_a_real_payload_parses() -> None:
    p = parse_payload(encode(payload_doc()))
    assert p.version == "4"
    assert p.receiver == "stopbudget"
    assert p.external_url == "http://alertmanager:9093"
    (a,) = p.alerts
    assert a.status is AlertStatus.FIRING
    assert a.alertname == "StopBudgetEMLow"
    # Nanoseconds are cut to microseconds; the zone is kept.
    assert a.starts_at == datetime(2024, 5, 1, 9, 58, 45, 739266, tzinfo=UTC)
    assert a.ends_at is not None
    assert a.ends_at.year == 1
    assert a.generator_url.startswith("http://prometheus")


def test_optional_fields_and_unknown_fields() -> None:
    doc = payload_doc()
    for key in (
        "groupLabels",
        "commonLabels",
        "commonAnnotations",
        "externalURL",
        "truncatedAlerts",
    ):
        del doc[key]
    for key in ("annotations", "endsAt", "generatorURL"):
        del doc["alerts"][0][key]
    doc["orgId"] = 1  # Grafana adds fields; newer Alertmanagers may too
    doc["alerts"][0]["silenceURL"] = "http://x"
    p = parse_payload(encode(doc))
    assert p.truncated_alerts == 0
    assert p.alerts[0].annotations == {}


def _without(path: Sequence[str | int]) -> dict[str, Any]:
    doc = payload_doc()
    node: Any = doc
    for part in path[:-1]:
        node = node[part]
    del node[path[-1]]
    return doc


def _with(path: Sequence[str | int], value: Any) -> dict[str, Any]:
    doc = payload_doc()
    node: Any = doc
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return doc


BAD_BODIES: list[tuple[str, bytes, str]] = [
    ("empty body", b"", "malformed JSON"),
    ("truncated JSON", b'{"version": "4", "alerts": [', "malformed JSON"),
    ("not UTF-8", b'{"version": "\xff\xfe"}', "malformed JSON"),
    ("deep nesting", b"[" * 100_000 + b"]" * 100_000, "malformed JSON"),
    ("a list", b"[]", "must be a JSON object, got list"),
    ("a string", b'"hello"', "must be a JSON object, got str"),
    ("null", b"null", "must be a JSON object, got NoneType"),
    ("version 3", encode(_with(["version"], "3")), "unsupported payload version '3'"),
    ("version as number", encode(_with(["version"], 4)), "unsupported payload version 4"),
    ("version null", encode(_with(["version"], None)), "unsupported payload version None"),
]
MISSING: list[list[str | int]] = [
    ["version"],
    ["groupKey"],
    ["status"],
    ["receiver"],
    ["alerts"],
    ["alerts", 0, "status"],
    ["alerts", 0, "labels"],
    ["alerts", 0, "startsAt"],
    ["alerts", 0, "fingerprint"],
]
MISTYPED: list[tuple[list[str | int], Any]] = [
    (["alerts"], {"a": 1}),
    (["alerts"], None),
    (["alerts", 0], "an alert"),
    (["status"], "pending"),
    (["alerts", 0, "status"], "active"),
    (["alerts", 0, "labels"], ["a", "b"]),
    (["alerts", 0, "labels"], {"severity": 3}),
    (["alerts", 0, "annotations"], {"x": None}),
    (["alerts", 0, "startsAt"], "yesterday"),
    (["alerts", 0, "startsAt"], "2024-05-01T12:00:00"),  # no zone
    (["alerts", 0, "startsAt"], 1714564800),
    (["alerts", 0, "fingerprint"], ""),
    (["alerts", 0, "fingerprint"], 12345),
    (["receiver"], 7),
    (["groupKey"], None),
    (["truncatedAlerts"], "3"),
    (["truncatedAlerts"], -1),
    (["truncatedAlerts"], 1.5),
    (["commonLabels"], "x"),
]
BAD_BODIES += [(f"missing {p}", encode(_without(p)), "invalid payload") for p in MISSING]
BAD_BODIES += [(f"{p} = {v!r}", encode(_with(p, v)), "invalid payload") for p, v in MISTYPED]


BAD_PARAMS = [pytest.param(body, reason, id=name) for name, body, reason in BAD_BODIES]


@pytest.mark.parametrize(("body", "reason"), BAD_PARAMS)
def test_bad_payloads_are_refused_with_a_reason(body: bytes, reason: str) -> None:
    with pytest.raises(PayloadError) as caught:
        parse_payload(body)
    assert reason in caught.value.reason
    if reason == "invalid payload":
        assert caught.value.problems
        assert all(":" in p for p in caught.value.problems)


def test_problems_name_the_field() -> None:
    with pytest.raises(PayloadError) as caught:
        parse_payload(encode(_without(["alerts", 0, "fingerprint"])))
    assert caught.value.problems == ["alerts[0].fingerprint: Field required"]


#: RFC 3339 times that parse but are outside years 1-9999 once in UTC (issue 15, defect 2).
OUT_OF_UTC = ["0001-01-01T00:30:00+01:00", "9999-12-31T23:30:00-01:00"]
#: The ends of what fits, all kept.
EDGES_OF_UTC = [
    ("0001-01-01T00:00:00Z", datetime(1, 1, 1, tzinfo=UTC)),
    ("0001-01-01T00:30:00-01:00", datetime(1, 1, 1, 1, 30, tzinfo=UTC)),
    ("9999-12-31T23:59:59.999999Z", datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
    ("9999-12-31T23:30:00+01:00", datetime(9999, 12, 31, 22, 30, tzinfo=UTC)),
]


@pytest.mark.parametrize("field", ["startsAt", "endsAt"])
@pytest.mark.parametrize("value", OUT_OF_UTC)
def test_a_time_out_of_utc_range_rejects_only_its_alert(field: str, value: str) -> None:
    """Issue 15, defect 2: such a startsAt validated, then converting it to UTC raised
    OverflowError in the background, after the 202: the whole group was lost."""
    bad = alert_doc("b")
    bad[field] = value
    payload = parse_payload(encode(payload_doc(alert_doc("a"), bad, alert_doc("c"))))
    assert [a.fingerprint for a in payload.alerts] == ["a", "c"]
    (rejected,) = payload.rejected
    assert (rejected.index, rejected.status) == (1, "firing")
    assert rejected.problems == (
        f"alerts[1].{field}: Value error, {value} is outside years 1-9999 in UTC",
    )
    plan_payload(payload, TARGETS, T0)  # and the others can be planned


@pytest.mark.parametrize(("text", "utc"), EDGES_OF_UTC)
def test_times_at_the_ends_of_the_calendar_that_fit_are_kept_in_utc(
    text: str, utc: datetime
) -> None:
    doc = alert_doc(starts_at=text)
    doc["endsAt"] = text
    (alert,) = parse_payload(encode(payload_doc(doc))).alerts
    assert alert.starts_at == utc
    assert alert.starts_at.tzinfo is UTC
    assert alert.ends_at == utc
    (update,) = plan_payload(parse_payload(encode(payload_doc(doc))), TARGETS, T0).policies
    assert update.alerts[0].starts_at == utc
    stored = [r.model_dump(mode="json", by_alias=True) for r in update.alerts]
    assert [AlertRecord.model_validate(r) for r in json.loads(json.dumps(stored))] == list(
        update.alerts
    )


def test_one_bad_alert_never_costs_the_others_of_its_group() -> None:
    bad_labels = alert_doc("b", labels={"severity": 3})  # type: ignore[dict-item]
    not_an_alert = "an alert"
    doc = payload_doc(alert_doc("a"), bad_labels, alert_doc("c"), not_an_alert)  # type: ignore[arg-type]
    doc["alerts"][2]["status"] = "active"
    payload = parse_payload(encode(doc))
    assert [a.fingerprint for a in payload.alerts] == ["a"]
    assert [(r.index, r.status) for r in payload.rejected] == [
        (1, "firing"),
        (2, "unknown"),
        (3, "unknown"),
    ]
    assert payload.rejected[0].problems == (
        "alerts[1].labels.severity: Input should be a valid string",
    )
    assert payload.rejected[2].problems[0].startswith("alerts[3]: Input should be")


def test_a_payload_whose_every_alert_is_bad_is_refused_with_every_problem() -> None:
    doc = payload_doc(alert_doc("a", starts_at=OUT_OF_UTC[0]), alert_doc("", starts_at="x"))
    with pytest.raises(PayloadError) as caught:
        parse_payload(encode(doc))
    assert caught.value.status == 400
    assert caught.value.reason == "invalid payload: 3 problem(s)"
    assert [p.split(":")[0] for p in caught.value.problems] == [
        "alerts[0].startsAt",
        "alerts[1].startsAt",
        "alerts[1].fingerprint",
    ]
    # An empty group is valid (nothing to do), as before.
    assert parse_payload(encode({**payload_doc(), "alerts": []})).alerts == []


offsets = st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))
any_time = st.builds(
    lambda naive, zone: naive.replace(tzinfo=zone).isoformat(),
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)),
    offsets,
)
label_maps = st.dictionaries(st.text(max_size=8), st.text(max_size=300) | json_values, max_size=4)
odd_alerts = st.fixed_dictionaries(
    {
        "status": st.sampled_from(["firing", "resolved"]) | json_values,
        "labels": st.sampled_from([{"stoppolicy": "llama", "namespace": "serving"}]) | label_maps,
        "startsAt": any_time | json_values,
        "fingerprint": st.text(max_size=200) | json_values,
    },
    optional={
        "endsAt": any_time | json_values,
        "annotations": label_maps,
        "generatorURL": st.text(max_size=20) | json_values,
    },
)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(alerts=st.lists(odd_alerts, max_size=6), now=st.datetimes(timezones=st.just(UTC)))
def test_whatever_is_accepted_can_be_planned_and_stored(
    alerts: list[dict[str, Any]], now: datetime
) -> None:
    """What validates is what the background computes with: any alert accepted can be
    matched, deduped and written to status (JSON) and read back, at any time."""
    refused: PayloadError | None = None
    try:
        payload = parse_payload(encode(payload_doc(*alerts) if alerts else payload_doc()))
    except PayloadError as exc:
        refused = exc
    if refused is not None:
        assert refused.status == 400
        assert alerts  # only a group of bad alerts is refused
        return
    assert len(payload.alerts) + len(payload.rejected) == max(len(alerts), 1)
    plan = plan_payload(payload, TARGETS, now)
    for update in plan.policies:
        stored = json.loads(json.dumps([r.model_dump(mode="json") for r in update.alerts]))
        records = tuple(AlertRecord.model_validate(r) for r in stored)
        assert firing(records, now) == update.alert_firing
        expire(records, now + timedelta(days=1))


# --------------------------------------------------------------------------- matching

MATCH_CASES = [
    ("name and namespace", {"stoppolicy": "llama", "namespace": "serving"}, ["llama"]),
    ("name in another namespace", {"stoppolicy": "llama", "namespace": "other"}, []),
    ("name without namespace", {"stoppolicy": "llama"}, []),
    ("namespace without name", {"namespace": "serving"}, []),
    ("matchLabels all equal", {"model": "mistral", "team": "ml", "x": "y"}, ["mistral"]),
    ("matchLabels partly equal", {"model": "mistral", "team": "ops"}, []),
    ("matchLabels partly present", {"model": "mistral"}, []),
    (
        "both ways at once",
        {"stoppolicy": "llama", "namespace": "serving", "model": "mistral", "team": "ml"},
        ["llama", "mistral"],
    ),
    ("case matters", {"stoppolicy": "Llama", "namespace": "serving"}, []),
    ("no labels", {}, []),
]


@pytest.mark.parametrize(
    ("labels", "names"), [pytest.param(lab, n, id=i) for i, lab, n in MATCH_CASES]
)
def test_matching(labels: dict[str, str], names: list[str]) -> None:
    assert [t.name for t in match_policies(labels, TARGETS)] == names


def test_empty_match_labels_match_nothing() -> None:
    assert not selects({}, PolicyTarget("ns", "p"))
    assert not selects({"anything": "x"}, PolicyTarget("ns", "p", match_labels={}))


def test_target_from_spec(policy: dict[str, Any]) -> None:
    bare = StopPolicySpec.model_validate(policy["spec"])
    t = PolicyTarget.from_spec("serving", "p", bare)
    assert (t.auditable, t.raise_budget_on_firing, dict(t.match_labels)) == (False, False, {})
    policy["spec"]["audit"] = {
        "endpoint": "http://vllm:8000",
        "model": "m",
        "dataset": {"configMapRef": {"name": "g"}},
        "budgets": [128],
        "alerts": {"matchLabels": {"team": "ml"}, "raiseBudgetOnFiring": True},
    }
    spec = StopPolicySpec.model_validate(policy["spec"])
    record = AlertRecord(fingerprint="f", starts_at=T0, status=AlertStatus.FIRING, last_seen=T0)
    t = PolicyTarget.from_spec("serving", "p", spec, [record])
    assert (t.auditable, t.raise_budget_on_firing, dict(t.match_labels)) == (
        True,
        True,
        {"team": "ml"},
    )
    assert t.alerts == (record,)


# --------------------------------------------------------------------------- dedupe


def test_same_fingerprint_and_starts_at_triggers_once() -> None:
    records, first = observe((), wire_alert(), T0)
    records, again = observe(records, wire_alert(), T0 + timedelta(minutes=5))
    assert (first, again) == (Outcome.TRIGGERED, Outcome.DUPLICATE)
    (record,) = records
    assert record.last_seen == T0 + timedelta(minutes=5)
    assert record.alertname == "StopBudgetEMLow"
    assert firing(records, T0)


def test_a_new_starts_at_triggers_again_and_resolves_the_old_one() -> None:
    records, _ = observe((), wire_alert(), T0)
    later = "2024-05-01T13:00:00Z"
    records, outcome = observe(records, wire_alert(starts_at=later), T0 + timedelta(hours=2))
    assert outcome is Outcome.TRIGGERED
    assert [r.status for r in records] == [AlertStatus.RESOLVED, AlertStatus.FIRING]


def test_resolved_triggers_nothing_and_clears() -> None:
    records, _ = observe((), wire_alert(), T0)
    records, outcome = observe(records, wire_alert(status="resolved"), T0 + timedelta(minutes=1))
    assert outcome is Outcome.RESOLVED
    assert not firing(records, T0)
    # The other Alertmanager of an HA pair sends its late firing copy: still nothing.
    records, late = observe(records, wire_alert(), T0 + timedelta(minutes=2))
    assert late is Outcome.DUPLICATE
    assert not firing(records, T0)
    records, again = observe(records, wire_alert(status="resolved"), T0 + timedelta(minutes=3))
    assert again is Outcome.DUPLICATE


def test_resolved_before_firing_absorbs_the_firing_copy() -> None:
    records, outcome = observe((), wire_alert(status="resolved"), T0)
    assert outcome is Outcome.RESOLVED
    records, late = observe(records, wire_alert(), T0)
    assert late is Outcome.DUPLICATE


def test_records_expire() -> None:
    cfg = DedupeConfig(firing_ttl=timedelta(hours=48), resolved_ttl=timedelta(hours=6))
    records, _ = observe((), wire_alert(), T0, cfg)
    assert expire(records, T0 + timedelta(hours=47), cfg) == records
    assert expire(records, T0 + timedelta(hours=48), cfg) == ()
    # A repeat after the firing record expired triggers again (firing_ttl > repeat_interval).
    _, outcome = observe(records, wire_alert(), T0 + timedelta(hours=49), cfg)
    assert outcome is Outcome.TRIGGERED
    resolved, _ = observe(records, wire_alert(status="resolved"), T0, cfg)
    assert expire(resolved, T0 + timedelta(hours=5), cfg) == resolved
    assert expire(resolved, T0 + timedelta(hours=6), cfg) == ()


def test_records_are_bounded_resolved_first() -> None:
    cfg = DedupeConfig(max_records=8)
    records: tuple[AlertRecord, ...] = ()
    for i in range(6):
        records, _ = observe(records, wire_alert(f"firing{i}"), T0 + timedelta(seconds=i), cfg)
    for i in range(6):
        status = "resolved"
        records, _ = observe(
            records, wire_alert(f"resolved{i}", status=status), T0 + timedelta(minutes=i), cfg
        )
    assert len(records) == 8
    assert sum(r.status is AlertStatus.FIRING for r in records) == 6
    assert {r.fingerprint for r in records} >= {"resolved4", "resolved5"}
    for i in range(20):
        records, _ = observe(
            records, wire_alert(f"more{i}"), T0 + timedelta(hours=1, seconds=i), cfg
        )
    assert len(records) == 8
    assert {r.fingerprint for r in records} == {f"more{i}" for i in range(12, 20)}


def test_records_survive_a_restart_through_status_json() -> None:
    records, _ = observe((), wire_alert(), T0)
    status = json.loads(json.dumps([r.model_dump(mode="json", by_alias=True) for r in records]))
    assert set(status[0]) == {"fingerprint", "startsAt", "status", "alertname", "lastSeen"}
    restored = [AlertRecord.model_validate(r) for r in status]
    target = PolicyTarget("serving", "llama", alerts=tuple(restored))
    plan = plan_payload(parse_payload(encode(payload_doc())), [target], T0 + timedelta(hours=4))
    (update,) = plan.policies
    assert not update.trigger_audit
    assert update.outcomes[0][1] is Outcome.DUPLICATE
    assert update.alert_firing


def test_plan_twins_in_one_payload_trigger_once() -> None:
    p = parse_payload(encode(payload_doc(alert_doc(), alert_doc())))
    (update,) = plan_payload(p, TARGETS, T0).policies
    assert [o for _, o in update.outcomes] == [Outcome.TRIGGERED, Outcome.DUPLICATE]
    assert update.trigger_audit
    assert update.raise_budget
    assert update.alert_firing
    assert update.key == ("serving", "llama")
    assert update.reason == "alert firing (StopBudgetEMLow): audit requested; 1 repeat(s) ignored"


def test_plan_per_policy_and_unmatched() -> None:
    mistral = {"alertname": "Slow", "model": "mistral", "team": "ml"}
    bare = {"alertname": "Bare", "stoppolicy": "bare", "namespace": "serving"}
    p = parse_payload(
        encode(
            payload_doc(
                alert_doc("a"),
                alert_doc("b", labels=mistral),
                alert_doc("c", labels=bare),
                alert_doc("d", labels={"alertname": "Other"}),
                alert_doc("e", status="resolved"),
            )
        )
    )
    plan = plan_payload(p, TARGETS, T0)
    by_name = {u.name: u for u in plan.policies}
    assert [a.fingerprint for a in plan.unmatched] == ["d"]
    assert by_name["llama"].trigger_audit
    assert [o for _, o in by_name["llama"].outcomes] == [Outcome.TRIGGERED, Outcome.RESOLVED]
    assert by_name["mistral"].trigger_audit
    assert not by_name["mistral"].raise_budget  # raiseBudgetOnFiring is off for mistral
    assert not by_name["bare"].trigger_audit  # no audit section
    assert by_name["bare"].outcomes[0][1] is Outcome.NO_AUDIT
    assert by_name["bare"].alert_firing
    assert "no audit section" in by_name["bare"].reason


def test_plan_known_records_override_the_snapshot() -> None:
    p = parse_payload(encode(payload_doc()))
    first = plan_payload(p, [LLAMA], T0).policies[0]
    again = plan_payload(p, [LLAMA], T0, known={LLAMA.key: first.alerts}).policies[0]
    assert (first.trigger_audit, again.trigger_audit) == (True, False)


def reference_observe(
    records: Sequence[AlertRecord], alert: WebhookAlert, now: datetime, config: DedupeConfig
) -> tuple[tuple[AlertRecord, ...], Outcome]:
    """The plain definition of :func:`observe` (expire, fold, append, expire), as it was
    written before issue 15 made the fold one pass: the oracle of the fast one."""
    now = now.astimezone(UTC)
    starts_at = alert.starts_at.astimezone(UTC)
    key = (alert.fingerprint, starts_at)
    kept: list[AlertRecord] = []
    known: AlertRecord | None = None
    for record in expire(records, now, config):
        if (record.fingerprint, record.starts_at.astimezone(UTC)) == key:
            known = record
            continue
        if (
            record.fingerprint == alert.fingerprint
            and record.status is AlertStatus.FIRING
            and record.starts_at < starts_at
        ):
            kept.append(record.model_copy(update={"status": AlertStatus.RESOLVED}))
            continue
        kept.append(record)
    newer = any(r.fingerprint == alert.fingerprint and r.starts_at > starts_at for r in kept)
    if alert.status is AlertStatus.FIRING:
        outcome = Outcome.DUPLICATE if known or newer else Outcome.TRIGGERED
        status = known.status if known else (AlertStatus.RESOLVED if newer else AlertStatus.FIRING)
    else:
        resolved_before = known and known.status is AlertStatus.RESOLVED
        outcome = Outcome.DUPLICATE if resolved_before else Outcome.RESOLVED
        status = AlertStatus.RESOLVED
    kept.append(
        AlertRecord(
            fingerprint=alert.fingerprint,
            starts_at=starts_at,
            status=status,
            alertname=alert.alertname[:256],
            last_seen=now,
        )
    )
    return expire(kept, now, config), outcome


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(
    payloads=st.lists(
        st.lists(
            st.tuples(
                st.integers(0, 12).map(lambda i: f"fp{i}"),
                st.integers(0, 5).map(lambda h: f"2024-05-01T0{h}:00:00+0{h % 3}:00"),
                st.sampled_from(["firing", "resolved"]),
            ),
            max_size=40,
        ),
        max_size=4,
    ),
    gaps=st.lists(st.integers(0, 30 * 3600), min_size=4, max_size=4),
    max_records=st.integers(1, 8),
    ttls=st.tuples(st.integers(0, 30), st.integers(0, 30)),
)
def test_planning_a_payload_is_the_plain_fold_of_its_alerts(
    payloads: list[list[tuple[str, str, str]]],
    gaps: list[int],
    max_records: int,
    ttls: tuple[int, int],
) -> None:
    """Issue 15, defect 3: plan_payload folds a payload in one pass per alert (it expired
    and sorted every record twice per alert: a second for 8,750 alerts); it must still
    be exactly the plain definition, evictions, expiry and ties included."""
    cfg = DedupeConfig(
        firing_ttl=timedelta(hours=ttls[0]),
        resolved_ttl=timedelta(hours=ttls[1]),
        max_records=max_records,
    )
    expected: tuple[AlertRecord, ...] = ()
    known: dict[tuple[str, str], tuple[AlertRecord, ...]] = {}
    now = T0
    for events, gap in zip(payloads, gaps, strict=False):
        now += timedelta(seconds=gap)
        docs = [alert_doc(f, starts_at=t, status=st_) for f, t, st_ in events]
        payload = parse_payload(
            encode(payload_doc(*docs) if docs else {**payload_doc(), "alerts": []})
        )
        outcomes = []
        for alert in payload.alerts:
            expected, outcome = reference_observe(expected, alert, now, cfg)
            outcomes.append(outcome)
        plan = plan_payload(payload, [LLAMA], now, known=known, config=cfg)
        if not payload.alerts:
            assert plan.policies == ()
            continue
        (update,) = plan.policies
        assert [o for _, o in update.outcomes] == outcomes
        assert update.alerts == expected
        known = {LLAMA.key: update.alerts}


target_labels = st.dictionaries(
    st.sampled_from(["team", "model", "env", "stoppolicy"]),
    st.sampled_from(["a", "b", "c"]),
    max_size=3,
)
policy_targets = st.lists(
    st.builds(
        PolicyTarget,
        namespace=st.sampled_from(["ns1", "ns2"]),
        name=st.sampled_from(["a", "b", "c"]),
        match_labels=target_labels,
    ),
    max_size=12,
)
alert_labels = st.dictionaries(
    st.sampled_from(["team", "model", "env", "stoppolicy", "namespace", "alertname"]),
    st.sampled_from(["a", "b", "c", "ns1", "ns2"]),
    max_size=6,
)


@pytest.mark.slow
@settings(max_examples=500, deadline=None)
@given(targets=policy_targets, labels=st.lists(alert_labels, max_size=5))
def test_the_policy_index_matches_as_selects_does(
    targets: list[PolicyTarget], labels: list[dict[str, str]]
) -> None:
    index = PolicyIndex(targets)
    for one in labels:
        assert index.match(one) == [t for t in targets if selects(one, t)]


def test_the_policy_index_looks_only_at_policies_sharing_a_label() -> None:
    """Matching costs the alert's labels and the policies sharing one, not every policy."""
    checked: list[str] = []

    class Counting(dict[str, str]):
        def get(self, key: str, default: Any = None) -> Any:
            checked.append(key)
            return super().get(key, default)

    targets = [PolicyTarget("ns", f"p{i}", match_labels={"team": f"t{i}"}) for i in range(1000)]
    targets += [PolicyTarget("ns", f"q{i}") for i in range(1000)]
    index = PolicyIndex(targets)
    assert index.match(Counting({"alertname": "x", "team": "nobody"})) == []
    assert len(checked) <= 4
    checked.clear()
    assert index.match(Counting({"team": "t7"})) == [targets[7]]
    assert index.match(Counting({"stoppolicy": "q3", "namespace": "ns"})) == [targets[1003]]
    assert len(checked) <= 12


def test_an_events_reason_lists_a_few_names() -> None:
    docs = [
        alert_doc(f"f{i}", labels={**alert_doc()["labels"], "alertname": f"A{i:04d}"})
        for i in range(5000)
    ]
    (update,) = plan_payload(parse_payload(encode(payload_doc(*docs))), TARGETS, T0).policies
    assert (
        update.reason
        == "alert firing (A0000, A0001, A0002, A0003, A0004 and 4995 more): audit requested"
    )


alert_events = st.lists(
    st.tuples(
        st.sampled_from(["f1", "f2", "f3"]),
        st.sampled_from(
            ["2024-05-01T10:00:00Z", "2024-05-01T11:00:00Z", "2024-05-01T10:00:00+02:00"]
        ),
        st.sampled_from(["firing", "resolved"]),
        st.integers(0, 500),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(events=alert_events)
def test_dedupe_triggers_each_instance_once(events: list[tuple[str, str, str, int]]) -> None:
    """Without expiry or eviction, each (fingerprint, startsAt) triggers exactly once if it
    is first seen firing and no later instance of its fingerprint was seen before; never
    on resolved; the AlertFiring condition is the latest instance of a fingerprint firing."""
    records: tuple[AlertRecord, ...] = ()
    now = T0
    seen: dict[tuple[str, datetime], str] = {}
    expected: list[tuple[str, datetime]] = []
    triggered: list[tuple[str, datetime]] = []
    for fingerprint, starts, status, gap in events:
        now += timedelta(seconds=gap)  # at most 40 x 500 s < resolved_ttl: nothing expires
        alert = wire_alert(fingerprint=fingerprint, starts_at=starts, status=status)
        key = (fingerprint, alert.starts_at.astimezone(UTC))
        late = any(f == fingerprint and t > key[1] for f, t in seen)
        if key not in seen and status == "firing" and not late:
            expected.append(key)
        seen.setdefault(key, status)
        records, outcome = observe(records, alert, now)
        if outcome is Outcome.TRIGGERED:
            triggered.append(key)
        if status == "resolved":
            assert outcome is not Outcome.TRIGGERED
            assert all(r.status is AlertStatus.RESOLVED for r in records if r.key == key)
        assert len(records) == len(seen)
        latest = {f: max(t for g, t in seen if g == f) for f, _ in seen}
        firing_keys = {r.key for r in records if r.status is AlertStatus.FIRING}
        assert firing_keys <= set(latest.items())
        assert firing(records, now) == bool(firing_keys)
    assert triggered == expected


@settings(max_examples=200, deadline=None)
@given(
    events=st.lists(
        st.tuples(
            st.integers(0, 20).map(lambda i: f"fp{i}"),
            st.integers(0, 5).map(lambda h: f"2024-05-01T0{h}:00:00Z"),
            st.sampled_from(["firing", "resolved"]),
            st.integers(0, 20 * 3600),
        ),
        max_size=60,
    ),
    max_records=st.integers(1, 8),
)
def test_dedupe_state_is_bounded_and_deterministic(
    events: list[tuple[str, str, str, int]], max_records: int
) -> None:
    cfg = DedupeConfig(max_records=max_records)
    records: tuple[AlertRecord, ...] = ()
    now = T0
    for fingerprint, starts, status, gap in events:
        now += timedelta(seconds=gap)
        alert = wire_alert(fingerprint=fingerprint, starts_at=starts, status=status)
        result = observe(records, alert, now, cfg)
        assert observe(records, alert, now, cfg) == result
        records, outcome = result
        assert len(records) <= max_records
        assert len({r.key for r in records}) == len(records)
        assert all(r.last_seen <= now for r in records)
        assert expire(records, now, cfg) == records
        if status == "resolved":
            assert outcome is not Outcome.TRIGGERED
