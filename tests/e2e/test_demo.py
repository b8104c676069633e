"""``stopbudget demo`` for real: Prometheus, the emulator, the operator and the replayed trace.

Short runs (about 25 s of wall time each).  Every wait polls a condition with a
timeout; nothing sleeps for a fixed time.
"""

from __future__ import annotations

import io
import os
import re
import signal
import struct
import sys
import threading
from pathlib import Path

import pytest

from stopbudget.devkit import demo, servers
from tests.support.procs import Process
from tests.support.requires import require_binaries
from tests.support.waiting import wait_for

pytestmark = pytest.mark.servers

ROOT = Path(__file__).resolve().parents[2]
#: A decision line: sim time, ..., "previous -> new", then the operator's reason.
DECISION = re.compile(r"^  (\d\d:\d\d:\d\d) .* (\d+) -> (\d+) +(\S.*)$")


def _running(pid: int) -> bool:
    """Whether a process with this PID exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _children(pid: int) -> set[int]:
    """PIDs of the live processes whose parent is ``pid``."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text(encoding="utf-8")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry.name))
    return found


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    assert data[12:16] == b"IHDR", "no IHDR chunk first"
    width, height = struct.unpack(">II", data[16:24])
    assert data[-8:-4] == b"IEND", "no IEND chunk at the end"
    return width, height


def test_demo_closes_the_loop_and_leaves_nothing_behind(tmp_path: Path) -> None:
    require_binaries(servers.PROMETHEUS)
    threads_before = set(threading.enumerate())
    children_before = _children(os.getpid())
    out = io.StringIO()

    result = demo.run(demo.Options(duration=24, out=tmp_path / "out"), stream=out)

    text = out.getvalue()
    assert result.exit_code == 0, text
    # Each decision is printed as it happens, with the operator's reason.
    lines = [m for line in text.splitlines() if (m := DECISION.match(line))]
    assert len(lines) == len(result.decisions) >= 3, text
    for match, decision in zip(lines, result.decisions, strict=True):
        assert (int(match[2]), int(match[3])) == (decision.previous, decision.budget)
        assert match[4] == decision.reason
        assert "pressure" in decision.reason
    # The first decision applies the EM-target budget before the replay; then the trace's
    # peak pushes the budget down and the quiet part lets it come back.
    first, later = result.decisions[0], result.decisions[1:]
    assert (first.previous, first.budget) == (demo.ORIGINAL_BUDGET, result.target)
    down = next(i for i, d in enumerate(later) if d.previous is not None and d.budget < d.previous)
    assert later[down].pressure is not None
    assert later[down].pressure > 1
    assert any(d.previous is not None and d.budget > d.previous for d in later[down + 1 :]), text
    assert result.floor is not None
    assert min(d.budget for d in result.decisions) >= result.floor
    assert result.patches == len(result.decisions)
    assert result.sidecar_identical is True
    assert result.restored is True
    assert result.tokens < result.tokens_static_max
    assert "summary:" in text
    assert "untouched (byte-identical)" in text
    assert result.png == tmp_path / "out" / "demo.png"
    width, height = _png_size(result.png)
    assert width > 500
    assert height > 500
    # Nothing is left running: the processes it reported, children, threads.
    assert set(result.pids) == {"prometheus", "operator"}
    for name, pid in result.pids.items():
        assert not _running(pid), f"{name} (pid {pid}) is still running"
        assert f"pid {pid}" in text
    assert _children(os.getpid()) <= children_before
    left = [t for t in set(threading.enumerate()) - threads_before if t.is_alive()]
    assert not [t for t in left if not t.daemon], left
    assert not [t for t in left if t.name == "kubernetes-emulator"], left


def test_ctrl_c_stops_everything(tmp_path: Path) -> None:
    require_binaries(servers.PROMETHEUS)
    process = Process(
        [sys.executable, "-m", "stopbudget", "demo", "--duration", "60", "--out", str(tmp_path)],
        tmp_path.parent / f"{tmp_path.name}-demo.log",
        cwd=ROOT,
    )

    def decided() -> bool:
        output = process.output()
        assert process.alive() or any(DECISION.match(line) for line in output.splitlines()), output
        return any(DECISION.match(line) for line in output.splitlines())

    try:
        wait_for(decided, timeout=60, what="the demo's first decision")
        output = process.output()
        pids = {
            name: int(m[1])
            for name in ("Prometheus", "operator")
            if (m := re.search(rf"{name} pid (\d+)", output))
        }
        assert set(pids) == {"Prometheus", "operator"}, output
        assert all(_running(pid) for pid in pids.values())

        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 130
    finally:
        if process.alive():
            process.kill()
    output = process.output()
    assert "interrupted" in output
    assert "Traceback" not in output, output
    for name, pid in pids.items():
        wait_for(lambda pid=pid: not _running(pid), timeout=10, what=f"{name} gone")
