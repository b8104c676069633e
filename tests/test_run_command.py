"""`stopbudget run` as users start it: a process, a kubeconfig, health endpoints, JSON logs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stopbudget import devservers
from stopbudget.emulator import ThreadedCluster, emulated_cluster_in_thread

pytestmark = pytest.mark.servers

NS = "serving"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ThreadedCluster]:
    with emulated_cluster_in_thread(tmp_path) as c:
        yield c


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def _policy() -> dict[str, Any]:
    return {
        "apiVersion": "stopbudget.io/v1alpha1",
        "kind": "StopPolicy",
        "metadata": {"name": "chat", "namespace": NS},
        "spec": {
            "targetRef": {"name": "vllm"},
            "budget": {
                "min": 64,
                "max": 1024,
                "initial": 300,
                "sink": {"type": "annotation", "name": "stopbudget.io/max-tokens"},
            },
            "quality": {"emTarget": 0.8, "emFloor": 0.7},
            "control": {"interval": "1s"},
        },
    }


@pytest.mark.parametrize("scope", [["-A"], ["-n", NS]])
def test_run_serves_health_reconciles_and_stops_on_sigterm(
    cluster: ThreadedCluster, tmp_path: Path, scope: list[str]
) -> None:
    cluster.create(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "vllm", "namespace": NS},
            "spec": {"template": {"spec": {"containers": [{"name": "vllm", "image": "v"}]}}},
        }
    )
    port = devservers.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOPBUDGET_")}
    env |= {"STOPBUDGET_METRICS_PORT": str(port), "STOPBUDGET_BIND_ADDRESS": "127.0.0.1"}
    log = (tmp_path / "operator.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stopbudget",
            "run",
            *scope,
            "--kubeconfig",
            str(cluster.kubeconfig),
            "--log-format",
            "json",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        devservers.wait_until(
            lambda: _get(f"http://127.0.0.1:{port}/readyz")[0] == 200, timeout=30, what="readiness"
        )
        assert _get(f"http://127.0.0.1:{port}/healthz") == (200, "ok\n")
        cluster.create(_policy())
        # No prior, no audit: the budget stays at initial and is written to the annotation.
        dep = cluster.wait_for(
            "apps/v1",
            "Deployment",
            NS,
            "vllm",
            lambda o: (
                (o or {}).get("metadata", {}).get("annotations", {}).get("stopbudget.io/max-tokens")
                == "300"
            ),
            within=30,
        )
        assert dep is not None
        logged = tmp_path / "operator.log"
        devservers.wait_until(
            lambda: "BudgetChanged" in logged.read_text(),
            timeout=30,
            what="the BudgetChanged log line",
        )
        code, text = _get(f"http://127.0.0.1:{port}/metrics")
        assert code == 200
        assert 'stopbudget_budget_tokens{namespace="serving",stoppolicy="chat"} 300.0' in text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
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
