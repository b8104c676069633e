"""A run ended by SIGTERM leaves no real server behind (readiness checks against a
stand-in server: tests/unit/devkit/test_devservers.py).
"""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path

import pytest

from stopbudget.devkit import servers
from tests.support.procs import Process
from tests.support.waiting import wait_for

SCRIPT = """
import signal, sys, threading
signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
from stopbudget.devkit.servers import DevPrometheus
prom = DevPrometheus(jobs=()).start()
print(prom.pid, flush=True)
threading.Event().wait()
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its new parent) counts as stopped.
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        return stat.read().split(") ", 1)[1][0] != "Z"


@pytest.mark.servers
def test_a_run_ended_by_sigterm_leaves_no_server_behind(tmp_path: Path) -> None:
    """`timeout` ends a test run with SIGTERM: the servers it started stop with it."""
    if servers.missing_binaries(servers.PROMETHEUS):
        pytest.skip("prometheus not installed: `make test` installs it")
    runner = Process([sys.executable, "-c", SCRIPT], tmp_path / "runner.log")
    printed = wait_for(
        lambda: re.search(r"^(\d+)\n", runner.output(), re.MULTILINE), timeout=60, what="its PID"
    )
    server_pid = int(printed[1])
    assert _alive(server_pid)
    runner.send_signal(signal.SIGTERM)
    assert runner.wait(timeout=30) == 128 + signal.SIGTERM
    wait_for(lambda: not _alive(server_pid), timeout=15, what="prometheus stopped")
