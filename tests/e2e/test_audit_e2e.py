"""Audits through the running operator, and the whole alert loop with the real servers.

* A new audit section starts an audit (trigger spec-change); the measured curve
  equals the test server's known curve exactly, lands in status and metrics,
  and the control law uses it from the next tick.
* The annotation ``stopbudget.io/audit-requested`` starts a manual audit and is
  removed when it starts.
* Real Prometheus evaluates a rule on the operator's own audit metric, real
  Alertmanager routes the alert to the operator's webhook with the bearer token
  from a file, and the operator runs an alert-triggered audit.

Each runs on both Kubernetes backends (the `cluster` fixture, tests/support/clusters.py).
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kopf.testing import KopfRunner

from stopbudget.controller.tick import first_delay
from stopbudget.core.curve import wilson_lower
from stopbudget.devkit import servers
from tests.support.builders import container, deployment, stop_policy
from tests.support.clusters import Cluster
from tests.support.openai_server import MODEL, Canned, ThreadedOpenAIServer, reply
from tests.support.waiting import wait_for

pytestmark = pytest.mark.servers

SP = ("stopbudget.io/v1alpha1", "StopPolicy")
DEPLOY = ("apps/v1", "Deployment")
OPERATOR = ["run", "-A", "--standalone", "-m", "stopbudget.controller.handlers"]
LADDER = [16, 32, 64, 128]


def _golden() -> tuple[list[dict[str, Any]], dict[str, Canned], dict[int, int]]:
    """40 questions: question i needs k_i tokens (cycling 10, 20, 40, 100); all answers right."""
    needs = [10, 20, 40, 100]
    items, replies = [], {}
    for i in range(40):
        question = f"What is {i} + {i}?"
        answer = str(2 * i)
        items.append({"question": question, "answer": answer})
        replies[question] = reply(answer, needs[i % 4])
    hits = {b: sum(1 for i in range(40) if needs[i % 4] <= b) for b in LADDER}
    return items, replies, hits


def _configmap(ns: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "golden", "namespace": ns},
        "data": {"golden.jsonl": "\n".join(json.dumps(i) for i in items) + "\n"},
    }


def _deployment(ns: str) -> dict[str, Any]:
    return deployment("vllm", ns, [container(image="vllm")])


def _policy(ns: str, endpoint: str, **audit: Any) -> dict[str, Any]:
    return stop_policy(
        "chat",
        ns,
        budget={"min": 16, "max": 128, "sink": {"type": "env", "name": "MAX_TOKENS"}},
        quality={"emTarget": 0.6, "emFloor": 0.4, "minSamples": 40},
        control={"interval": "1s", "cooldown": "0s", "downscaleStabilization": "0s"},
        audit={
            "endpoint": endpoint,
            "model": MODEL,
            "dataset": {"configMapRef": {"name": "golden"}},
            "budgets": LADDER,
            "method": "truncate",
            "sampleSize": 40,
            "concurrency": 8,
        }
        | audit,
    )


def _status(obj: dict[str, Any] | None) -> dict[str, Any]:
    return dict((obj or {}).get("status") or {})


def _last_audit(result: str, trigger: str) -> Any:
    def check(obj: dict[str, Any] | None) -> bool:
        last = _status(obj).get("lastAudit") or {}
        return bool(last.get("result") == result and last.get("trigger") == trigger)

    return check


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


@pytest.fixture
def model_server() -> Iterator[tuple[Any, dict[int, int], list[dict[str, Any]]]]:
    items, replies, hits = _golden()
    with ThreadedOpenAIServer(replies) as server:
        yield server, hits, items


def _env(
    monkeypatch: pytest.MonkeyPatch,
    cluster: Cluster,
    prometheus_url: str,
    metrics_port: int,
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    monkeypatch.setenv("STOPBUDGET_PROMETHEUS_URL", prometheus_url)
    monkeypatch.setenv("STOPBUDGET_BIND_ADDRESS", "127.0.0.1")
    monkeypatch.setenv("STOPBUDGET_METRICS_PORT", str(metrics_port))
    monkeypatch.delenv("STOPBUDGET_NAMESPACES", raising=False)


def test_audit_measures_the_known_curve_and_the_law_uses_it(
    cluster: Cluster,
    model_server: tuple[Any, dict[int, int], list[dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, hits, items = model_server
    port = servers.free_port()
    _env(monkeypatch, cluster, "http://127.0.0.1:9", port)  # no signals: Prometheus unused
    cluster.create(_deployment(cluster.ns))
    cluster.create(_configmap(cluster.ns, items))
    with KopfRunner(OPERATOR, timeout=60) as runner:
        cluster.create(_policy(cluster.ns, server.url))
        obj = cluster.wait_for(
            *SP, cluster.ns, "chat", _last_audit("Succeeded", "spec-change"), within=30
        )
        status = _status(obj)
        assert status["curveSource"] == "audit"
        measured = {
            p["budget"]: (round(p["em"] * p["samples"]), p["samples"]) for p in status["curve"]
        }
        assert measured == {b: (hits[b], 40) for b in LADDER}
        for point in status["curve"]:
            expected = wilson_lower(hits[point["budget"]], 40, 0.95)
            assert point["lower"] == pytest.approx(expected, abs=1e-6)
        # One generation per question: truncate scores the whole ladder at once.
        assert len(server.requests) == 40
        # The law uses the audited curve: the cheapest budget with lower >= 0.6 is 64 (30/40).
        obj = cluster.wait_for(
            *SP, cluster.ns, "chat", lambda o: _status(o).get("budget") == 64, within=20
        )
        audited = next(c for c in _status(obj)["conditions"] if c["type"] == "Audited")
        assert audited["status"] == "True"
        text = _metrics(port)
        assert f'stopbudget_audit_exact_match_ratio{{budget="64",namespace="{cluster.ns}",' in text
        assert (
            f'stopbudget_audit_runs_total{{namespace="{cluster.ns}",result="Succeeded",'
            'stoppolicy="chat",trigger="spec-change"} 1.0'
        ) in text

        # A manual request: the annotation starts an audit and is removed.
        cluster.patch(
            *SP,
            cluster.ns,
            "chat",
            {"metadata": {"annotations": {"stopbudget.io/audit-requested": "please"}}},
        )
        obj = cluster.wait_for(
            *SP, cluster.ns, "chat", _last_audit("Succeeded", "manual"), within=30
        )
        assert "stopbudget.io/audit-requested" not in (obj or {})["metadata"].get("annotations", {})
        assert len(server.requests) == 80
        cluster.wait_for_event(cluster.ns, "chat", "AuditSucceeded", count=2)
    assert runner.exception is None, runner.output
    assert "AuditSucceeded" in runner.output


def test_a_failed_audit_keeps_the_previous_curve(
    cluster: Cluster,
    model_server: tuple[Any, dict[int, int], list[dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, _, items = model_server
    _env(monkeypatch, cluster, "http://127.0.0.1:9", servers.free_port())
    cluster.create(_deployment(cluster.ns))
    cluster.create(_configmap(cluster.ns, items[:10]))  # fewer answers than minSamples (40)
    policy = _policy(cluster.ns, server.url)
    policy["spec"]["quality"]["prior"] = [{"budget": 128, "em": 0.9, "samples": 1000}]
    with KopfRunner(OPERATOR, timeout=60) as runner:
        cluster.create(policy)
        obj = cluster.wait_for(
            *SP, cluster.ns, "chat", _last_audit("Failed", "spec-change"), within=30
        )
        status = _status(obj)
        assert "budget 16: 10" in status["lastAudit"]["message"]
        assert status["curveSource"] == "prior"
        degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
        assert degraded["status"] == "True"
        cluster.wait_for_event(cluster.ns, "chat", "AuditFailed")
    assert runner.exception is None, runner.output


def test_live_em_below_the_floor_starts_a_quality_guard_audit(
    cluster: Cluster,
    model_server: tuple[Any, dict[int, int], list[dict[str, Any]]],
    prometheus_server: servers.DevPrometheus,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The quality guard's audit is recorded with its own trigger (issue 10): in
    status.lastAudit, its Events and stopbudget_audit_runs_total."""
    server, _, items = model_server
    port = servers.free_port()
    _env(monkeypatch, cluster, prometheus_server.url, port)
    cluster.create(_deployment(cluster.ns))
    cluster.create(_configmap(cluster.ns, items))
    policy = _policy(cluster.ns, server.url)
    policy["spec"]["quality"]["query"] = "vector(0.1)"  # live EM 0.1, below emFloor 0.4
    with KopfRunner(OPERATOR, timeout=60) as runner:
        cluster.create(policy)
        # While live EM stays low the guard asks again on the tick that records its audit,
        # so status shows the next one Running: its trigger is what is recorded.
        obj = cluster.wait_for(
            *SP,
            cluster.ns,
            "chat",
            lambda o: (_status(o).get("lastAudit") or {}).get("trigger") == "quality-guard",
            within=30,
        )
        assert "the quality guard asked for it" in _status(obj)["lastAudit"]["message"]

        def events(reason: str, prefix: str) -> bool:
            return any(
                e.get("reason") == reason
                and (e.get("involvedObject") or {}).get("name") == "chat"
                and str(e.get("message")).startswith(prefix)
                for e in cluster.events(cluster.ns)
            )

        wait_for(
            lambda: events("AuditStarted", "quality-guard audit starts: the quality guard"),
            what="the quality-guard AuditStarted Event",
        )
        wait_for(
            lambda: events("AuditSucceeded", "quality-guard audit: EM by budget"),
            what="the quality-guard AuditSucceeded Event",
        )
        text = _metrics(port)
        runs = f'stopbudget_audit_runs_total{{namespace="{cluster.ns}",result="Succeeded",'
        # No evidence at first: the guard acts once the first (spec-change) audit is in.
        assert f'{runs}stoppolicy="chat",trigger="spec-change"}} 1.0' in text
        guard = r'stoppolicy="chat",trigger="quality-guard"\} (\S+)'
        counted = re.search(re.escape(runs) + guard, text)
        assert counted is not None, text
        assert float(counted.group(1)) >= 1
        assert f'{runs}stoppolicy="chat",trigger="alert"}} 0.0' in text  # none labelled alert
        assert (
            f'stopbudget_audit_runs_total{{namespace="{cluster.ns}",result="Failed",'
            'stoppolicy="chat",trigger="quality-guard"} 0.0'
        ) in text  # pre-created at 0 for alert rules, as for every trigger
    assert runner.exception is None, runner.output


def test_alert_loop_with_real_prometheus_and_alertmanager(
    cluster: Cluster,
    model_server: tuple[Any, dict[int, int], list[dict[str, Any]]],
    start_prometheus: Any,
    start_alertmanager: Any,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    server, _, items = model_server
    metrics_port, webhook_port = servers.free_port(), servers.free_port()
    token = tmp_path / "token"
    token.write_text("s3cret-token\n", encoding="utf-8")
    alertmanager = start_alertmanager(
        webhook_url=f"http://127.0.0.1:{webhook_port}/alertmanager",
        webhook_token="s3cret-token",
    )
    # A rule on the operator's own audit metric: EM at the smallest budget is low.
    rules = """
groups:
  - name: stopbudget
    rules:
      - alert: StopPolicyEMLowAtSmallBudget
        expr: stopbudget_audit_exact_match_ratio{budget="16"} < 0.5
        labels: {severity: warning}
"""
    prometheus = start_prometheus(
        jobs=("stopbudget",), rules={"stopbudget.yml": rules}, alertmanagers=[alertmanager.url]
    )
    prometheus.add_targets("stopbudget", "operator", [f"127.0.0.1:{metrics_port}"])
    _env(monkeypatch, cluster, prometheus.url, metrics_port)
    monkeypatch.setenv("STOPBUDGET_WEBHOOK_PORT", str(webhook_port))
    monkeypatch.setenv("STOPBUDGET_WEBHOOK_TOKEN_FILE", str(token))
    cluster.create(_deployment(cluster.ns))
    cluster.create(_configmap(cluster.ns, items))
    with KopfRunner(OPERATOR, timeout=90) as runner:
        cluster.create(_policy(cluster.ns, server.url))
        cluster.wait_for(
            *SP, cluster.ns, "chat", _last_audit("Succeeded", "spec-change"), within=30
        )
        # The rule fires on the audit's series; Alertmanager posts it to the webhook.
        obj = cluster.wait_for(
            *SP, cluster.ns, "chat", _last_audit("Succeeded", "alert"), within=60
        )
        status = _status(obj)
        assert [a["alertname"] for a in status["alerts"]] == ["StopPolicyEMLowAtSmallBudget"]
        firing = next(c for c in status["conditions"] if c["type"] == "AlertFiring")
        assert firing["status"] == "True"
        text = _metrics(metrics_port)
        assert (
            f'stopbudget_audit_runs_total{{namespace="{cluster.ns}",result="Succeeded",'
            'stoppolicy="chat",trigger="alert"} 1.0'
        ) in text
        assert 'stopbudget_alertmanager_alerts_total{outcome="triggered",status="firing"}' in text
        cluster.wait_for_event(cluster.ns, "chat", "AuditSucceeded", count=2)
    assert runner.exception is None, runner.output


def _post_alert(port: int, token: str, ns: str, starts_at: str, policy: str = "chat") -> int:
    payload = {
        "version": "4",
        "groupKey": '{}:{alertname="StopPolicyEMBelowFloor"}',
        "status": "firing",
        "receiver": "stopbudget",
        "groupLabels": {"alertname": "StopPolicyEMBelowFloor"},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "truncatedAlerts": 0,
        "alerts": [
            {
                "status": "firing",
                "labels": {
                    "alertname": "StopPolicyEMBelowFloor",
                    "stoppolicy": policy,
                    "namespace": ns,
                },
                "annotations": {},
                "startsAt": starts_at,
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus:9090/graph",
                "fingerprint": "c0ffee0123456789",
            }
        ],
    }
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/alertmanager",
        data=json.dumps(payload).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        with exc:
            return int(exc.code)


def test_alert_dedupe_survives_an_operator_restart(
    cluster: Cluster,
    model_server: tuple[Any, dict[int, int], list[dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    server, _, items = model_server
    webhook_port = servers.free_port()
    token = tmp_path / "token"
    token.write_text("t0ken", encoding="utf-8")
    metrics_port = servers.free_port()
    _env(monkeypatch, cluster, "http://127.0.0.1:9", metrics_port)
    monkeypatch.setenv("STOPBUDGET_WEBHOOK_PORT", str(webhook_port))
    monkeypatch.setenv("STOPBUDGET_WEBHOOK_TOKEN_FILE", str(token))
    cluster.create(_deployment(cluster.ns))
    cluster.create(_configmap(cluster.ns, items))
    starts_at = "2026-11-23T10:00:00Z"
    with KopfRunner(OPERATOR, timeout=60) as runner:
        cluster.create(_policy(cluster.ns, server.url))
        cluster.wait_for(
            *SP, cluster.ns, "chat", _last_audit("Succeeded", "spec-change"), within=30
        )
        assert _post_alert(webhook_port, "t0ken", cluster.ns, starts_at) == 202
        obj = cluster.wait_for(
            *SP, cluster.ns, "chat", _last_audit("Succeeded", "alert"), within=30
        )
        first_alert_audit = _status(obj)["lastAudit"]["time"]
        cluster.wait_for_event(cluster.ns, "chat", "AuditSucceeded", count=2)
    assert runner.exception is None, runner.output
    requests_before = len(server.requests)
    stopped = _status(cluster.get(*SP, cluster.ns, "chat"))["lastEvaluationTime"]

    with KopfRunner(OPERATOR, timeout=60) as runner:
        # The same alert again (an HA twin, or a repeat) after the restart: deduplicated.
        # First the new process ticks once, so the webhook knows the policy.
        cluster.wait_for(
            *SP,
            cluster.ns,
            "chat",
            lambda o: _status(o).get("lastEvaluationTime", "") > stopped,
            within=20,
        )

        def accepted() -> bool:
            try:
                return _post_alert(webhook_port, "t0ken", cluster.ns, starts_at) == 202
            except OSError:  # not listening yet
                return False

        wait_for(accepted, timeout=20, what="the webhook to accept")
        stamp = _status(cluster.get(*SP, cluster.ns, "chat"))["lastEvaluationTime"]
        cluster.wait_for(
            *SP,
            cluster.ns,
            "chat",
            lambda o: _status(o).get("lastEvaluationTime", "") > stamp,
            within=20,
        )
        status = _status(cluster.get(*SP, cluster.ns, "chat"))
        assert status["lastAudit"]["time"] == first_alert_audit
        assert len(server.requests) == requests_before
        assert (
            'stopbudget_alertmanager_alerts_total{outcome="duplicate",status="firing"} 1.0'
            in _metrics(metrics_port)
        )
        # A new occurrence (another startsAt) does trigger.
        assert _post_alert(webhook_port, "t0ken", cluster.ns, "2026-11-23T11:00:00Z") == 202
        obj = cluster.wait_for(
            *SP,
            cluster.ns,
            "chat",
            lambda o: (
                _status(o).get("lastAudit", {}).get("time") != first_alert_audit
                and _status(o).get("lastAudit", {}).get("result") == "Succeeded"
            ),
            within=30,
        )
        assert _status(obj)["lastAudit"]["trigger"] == "alert"
        cluster.wait_for_event(cluster.ns, "chat", "AuditSucceeded", count=3)
    assert runner.exception is None, runner.output


def test_an_alert_right_after_a_restart_is_never_lost(
    cluster: Cluster,
    model_server: tuple[Any, dict[int, int], list[dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """After a restart a policy's first tick waits up to half its interval; an alert that
    arrives before it must not be accepted and lost: 503 until the policy is known, then
    202 and the audit."""
    server, _, items = model_server
    webhook_port, metrics_port = servers.free_port(), servers.free_port()
    token = tmp_path / "token"
    token.write_text("t0ken", encoding="utf-8")
    _env(monkeypatch, cluster, "http://127.0.0.1:9", metrics_port)
    monkeypatch.setenv("STOPBUDGET_WEBHOOK_PORT", str(webhook_port))
    monkeypatch.setenv("STOPBUDGET_WEBHOOK_TOKEN_FILE", str(token))
    policy = _policy(cluster.ns, server.url)
    policy["spec"]["control"]["interval"] = "1h"
    # A name whose first tick after a restart comes late (the offset is stable per name).
    name = next(
        f"chat-{i}"
        for i in range(100)
        if first_delay(cluster.ns, f"chat-{i}", policy["spec"]) > 120
    )
    policy["metadata"]["name"] = name
    cluster.create(_deployment(cluster.ns))
    cluster.create(_configmap(cluster.ns, items))
    with KopfRunner(OPERATOR, timeout=60) as runner:
        cluster.create(policy)
        cluster.wait_for(*SP, cluster.ns, name, _last_audit("Succeeded", "spec-change"), 30)
        cluster.wait_for_event(cluster.ns, name, "AuditSucceeded")
    assert runner.exception is None, runner.output

    answers: list[int] = []

    def accepted() -> bool:
        try:
            answers.append(
                _post_alert(webhook_port, "t0ken", cluster.ns, "2026-11-23T10:00:00Z", name)
            )
        except OSError:  # not listening yet
            return False
        return answers[-1] == 202

    with KopfRunner(OPERATOR, timeout=60) as runner:
        wait_for(accepted, timeout=30, what="the webhook to accept the alert")
        assert set(answers) <= {202, 503}, answers
        cluster.wait_for(*SP, cluster.ns, name, _last_audit("Succeeded", "alert"), within=30)
        cluster.wait_for_event(cluster.ns, name, "AuditSucceeded", count=2)
    assert runner.exception is None, runner.output


def _prometheus_value(url: str, query: str) -> float | None:
    address = f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(address, timeout=5) as response:
        result = json.load(response)["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def _evidence(obj: dict[str, Any] | None) -> tuple[str, str, str] | None:
    found = next(
        (c for c in _status(obj).get("conditions", []) if c["type"] == "EvidenceReady"), None
    )
    return None if found is None else (found["status"], found["reason"], found["message"])


def test_a_policy_without_prior_created_under_overload_audits_at_once(
    cluster: Cluster,
    prometheus_server: servers.DevPrometheus,
    make_exporter: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Cold start (issue 12): no quality.prior, the fleet overloaded (pressure 4 > 1,
    deferUnderPressure and maxDeferral 2h by default): the first audit starts at the first
    tick (labelled spec-change: the policy is new; cold-start is due too) and EvidenceReady
    goes from WaitingForEvidence to True."""
    items, replies, _ = _golden()
    exporter = make_exporter()
    exporter.set_load(waiting=40, running=96, kv_cache=0.97)
    waiting = f'vllm:num_requests_waiting{{model_name="{exporter.model_name}"}}'
    wait_for(
        lambda: _prometheus_value(prometheus_server.url, waiting) == 40,
        what="Prometheus to scrape the overloaded engine",
        timeout=30,
    )
    _env(monkeypatch, cluster, prometheus_server.url, servers.free_port())
    monkeypatch.setenv("STOPBUDGET_QUERY_WINDOW", "10s")
    cluster.create(_deployment(cluster.ns))
    cluster.create(_configmap(cluster.ns, items))
    policy = _policy(cluster.ns, "")
    policy["spec"]["load"] = {
        "preset": "vllm",
        "selector": {"model_name": exporter.model_name},
        "signals": [{"name": "queue", "target": 10}],
    }
    # Each answer takes a moment (up to 100 tokens x 5 ms): the waiting state is seen.
    with (
        ThreadedOpenAIServer(replies, token_delay=0.005) as server,
        KopfRunner(OPERATOR, timeout=60) as runner,
    ):
        policy["spec"]["audit"]["endpoint"] = server.url
        cluster.create(policy)
        obj = cluster.wait_for(
            *SP, cluster.ns, "chat", lambda o: (_evidence(o) or ("",))[0] == "False", within=30
        )
        _, reason, message = _evidence(obj) or ("", "", "")
        assert reason == "WaitingForEvidence", message
        assert "the spec-change audit started at" in message
        assert _status(obj)["lastAudit"]["trigger"] == "spec-change"
        obj = cluster.wait_for(
            *SP, cluster.ns, "chat", lambda o: (_evidence(o) or ("",))[0] == "True", within=60
        )
        assert (_evidence(obj) or ("", ""))[1] == "AuditCurve"
        assert _status(obj)["lastAudit"]["result"] == "Succeeded"
        assert _status(obj)["pressure"] > 1
        started = [
            str(e.get("message"))
            for e in cluster.events(cluster.ns)
            if e.get("reason") == "AuditStarted"
            and (e.get("involvedObject") or {}).get("name") == "chat"
        ]
        assert started, "no AuditStarted Event"
        assert started[0].startswith("spec-change audit starts: the audit section is new")
        assert "(also due: cold-start); not deferred despite pressure" in started[0]
        assert not any(e.get("reason") == "AuditDeferred" for e in cluster.events(cluster.ns)), (
            "the cold start was deferred"
        )
    assert runner.exception is None, runner.output


def _pooled(audits: int) -> Any:
    def check(obj: dict[str, Any] | None) -> bool:
        curve = _status(obj).get("curve") or []
        return bool(curve) and all(p.get("audits") == audits for p in curve)

    return check


def test_audits_pool_across_a_restart_and_a_new_golden_set_starts_over(
    cluster: Cluster,
    model_server: tuple[Any, dict[int, int], list[dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The curve pools the audits of one measurement; the pool lives in status
    (auditHistory), so a new operator process goes on pooling; editing the golden set
    is a new measurement, and the pool starts again from its first audit."""
    server, hits, items = model_server
    _env(monkeypatch, cluster, "http://127.0.0.1:9", servers.free_port())
    cluster.create(_deployment(cluster.ns))
    cluster.create(_configmap(cluster.ns, items))
    with KopfRunner(OPERATOR, timeout=60) as runner:
        cluster.create(_policy(cluster.ns, server.url))
        cluster.wait_for(*SP, cluster.ns, "chat", _pooled(1), within=30)
    assert runner.exception is None, runner.output
    request = {"metadata": {"annotations": {"stopbudget.io/audit-requested": "please"}}}

    with KopfRunner(OPERATOR, timeout=60) as runner:
        cluster.patch(*SP, cluster.ns, "chat", request)
        obj = cluster.wait_for(*SP, cluster.ns, "chat", _pooled(2), within=30)
        status = _status(obj)
        assert {
            p["budget"]: (p["samples"], round(p["em"] * p["samples"])) for p in status["curve"]
        } == {b: (80, 2 * hits[b]) for b in LADDER}
        history = status["auditHistory"]
        assert len(history) == 2
        assert history[0]["measurement"] == history[1]["measurement"]
        assert not any(h.get("held") for h in history)
        assert "the curve pools the last 2 audit(s)" in status["lastAudit"]["message"]
        first = history[0]["measurement"]

        edited = _configmap(cluster.ns, items[::-1])  # the same questions, another file
        cluster.patch("v1", "ConfigMap", cluster.ns, "golden", {"data": edited["data"]})
        cluster.patch(*SP, cluster.ns, "chat", request)
        obj = cluster.wait_for(
            *SP,
            cluster.ns,
            "chat",
            lambda o: (
                [h["measurement"] for h in _status(o).get("auditHistory") or []]
                not in ([], [first], [first, first])
            ),
            within=30,
        )
        status = _status(obj)
        assert len(status["auditHistory"]) == 1
        assert all(p["audits"] == 1 and p["samples"] == 40 for p in status["curve"])
        assert "a new measurement" in status["lastAudit"]["message"]
    assert runner.exception is None, runner.output
