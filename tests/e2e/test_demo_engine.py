"""``stopbudget demo --engine llamacpp`` on llama-server (without it: tests/unit/devkit).

The run on llama-server (marked ``engine``) lasts about 45 s: llama-server starts and
is measured, Prometheus discovers it, then 30 s of load.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from stopbudget.devkit import demo_engine
from tests.e2e.test_demo import _children, _running
from tests.support.requires import require_binaries, require_engine


@pytest.mark.engine
def test_the_demo_runs_the_loop_on_llama_server(tmp_path: Path) -> None:
    require_engine()
    from stopbudget.devkit import servers

    require_binaries(servers.PROMETHEUS)
    children_before = _children(os.getpid())
    out = io.StringIO()

    result = demo_engine.run(
        demo_engine.EngineOptions(duration=30, out=tmp_path / "out"), stream=out
    )

    text = out.getvalue()
    print(text)
    assert result.exit_code == 0, text
    # The static budget, then the operator's cut reached the gate (the kubelet mirror's writes).
    assert result.budgets[0] == demo_engine.HIGH, text
    assert min(result.budgets) < demo_engine.HIGH, text
    assert "StopPolicy created" in text
    assert result.before == pytest.approx(demo_engine.HIGH, rel=0.1), text
    assert result.after is not None, text
    assert result.after < result.before, text
    assert result.peak_deferred > 0, text
    assert result.restored is True, text
    assert "summary:" in text
    assert set(result.pids) == {"llama-server", "prometheus", "gate", "operator"}
    for name, pid in result.pids.items():
        assert not _running(pid), f"{name} (pid {pid}) is still running"
    assert _children(os.getpid()) <= children_before
