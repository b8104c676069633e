"""`stopbudget run` as users start it: a process, a kubeconfig, health endpoints, JSON logs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from stopbudget.devkit import servers
from tests.support.builders import container, deployment, stop_policy
from tests.support.clusters import Cluster
from tests.support.procs import Process
from tests.support.waiting import wait_for

pytestmark = pytest.mark.servers


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def _policy(ns: str) -> dict[str, Any]:
    return stop_policy(
        "chat",
        ns,
        budget={
            "min": 64,
            "max": 1024,
            "initial": 300,
            "sink": {"type": "annotation", "name": "stopbudget.io/max-tokens"},
        },
        control={"interval": "1s"},
    )


@pytest.mark.parametrize("scope", ["-A", "-n"])
def test_run_serves_health_reconciles_and_stops_on_sigterm(
    cluster: Cluster, tmp_path: Path, scope: str
) -> None:
    cluster.create(deployment("vllm", cluster.ns, [container(image="v")]))
    port = servers.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOPBUDGET_")}
    env |= {"STOPBUDGET_METRICS_PORT": str(port), "STOPBUDGET_BIND_ADDRESS": "127.0.0.1"}
    proc = Process(
        [
            sys.executable,
            "-m",
            "stopbudget",
            "run",
            *([scope] if scope == "-A" else [scope, cluster.ns]),
            "--kubeconfig",
            str(cluster.kubeconfig),
            "--log-format",
            "json",
        ],
        tmp_path / "operator.log",
        env=env,
    )
    try:
        wait_for(
            lambda: _get(f"http://127.0.0.1:{port}/readyz")[0] == 200, timeout=30, what="readiness"
        )
        assert _get(f"http://127.0.0.1:{port}/healthz") == (200, "ok\n")
        cluster.create(_policy(cluster.ns))
        # No prior, no audit: the budget stays at initial and is written to the annotation.
        dep = cluster.wait_for(
            "apps/v1",
            "Deployment",
            cluster.ns,
            "vllm",
            lambda o: (
                (o or {}).get("metadata", {}).get("annotations", {}).get("stopbudget.io/max-tokens")
                == "300"
            ),
            within=30,
        )
        assert dep is not None
        logged = tmp_path / "operator.log"
        wait_for(
            lambda: "BudgetChanged" in logged.read_text(),
            timeout=30,
            what="the BudgetChanged log line",
        )
        code, text = _get(f"http://127.0.0.1:{port}/metrics")
        assert code == 200
        assert (
            f'stopbudget_budget_tokens{{namespace="{cluster.ns}",stoppolicy="chat"}} 300.0' in text
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.alive():
            proc.kill()
    lines = [line for line in (tmp_path / "operator.log").read_text().splitlines() if line]
    assert lines
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert len(records) >= len(lines) * 0.9, lines[:5]
    messages = [str(r.get("message", "")) for r in records]
    assert any("BudgetChanged" in m for m in messages), messages


def test_run_rejects_bad_settings_naming_the_variable(tmp_path: Path) -> None:
    env = dict(os.environ) | {"STOPBUDGET_METRICS_PORT": "eighty"}
    done = subprocess.run(
        [sys.executable, "-m", "stopbudget", "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "STOPBUDGET_METRICS_PORT" in done.stderr
