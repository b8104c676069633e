"""``stopbudget gate`` from the command line: every flag a user can get wrong is named with
its fix (exit 2), and a real process serves, applies a budget and stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from stopbudget.cli import gate, main
from stopbudget.devkit import servers
from stopbudget.gate.caps import Engine
from tests.support.openai_server import MODEL, ThreadedOpenAIServer, reply
from tests.support.procs import Process
from tests.support.waiting import wait_for


def test_engines_agree_with_the_caps_module() -> None:
    assert tuple(e.value for e in Engine) == gate.ENGINES


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("127.0.0.1:8000", ("127.0.0.1", 8000)),
        ("0.0.0.0:8000", ("0.0.0.0", 8000)),
        ("localhost:0", ("localhost", 0)),
        ("[::]:9090", ("::", 9090)),
        ("[::1]:1", ("::1", 1)),
    ],
)
def test_addresses(text: str, parsed: tuple[str, int]) -> None:
    assert gate.parse_address(text) == parsed


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--upstream", "localhost:8080"], "argument --upstream: 'localhost:8080' is not the"),
        (["--upstream", "ftp://x"], "write e.g. http://127.0.0.1:8080"),
        (["--upstream", "http://h:1?q=1"], "argument --upstream"),
        (["--listen", "8000"], "argument --listen: '8000' is not HOST:PORT: write e.g."),
        (["--listen", "0.0.0.0:99999"], "argument --listen: '0.0.0.0:99999' is not HOST:PORT"),
        (["--listen", ":::8000"], "argument --listen"),
        (["--metrics-listen", "[zz]:1"], "argument --metrics-listen: '[zz]:1': 'zz' in brackets"),
        (["--engine", "tgi"], "argument --engine: invalid choice: 'tgi'"),
        (["--class-header", "x tier"], "argument --class-header: 'x tier' is not an HTTP header"),
    ],
)
def test_bad_flags_are_named(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = {"--upstream": "http://127.0.0.1:8080", "--budgets": str(tmp_path)}
    flags = dict(base, **dict(zip(argv[::2], argv[1::2], strict=True)))
    with pytest.raises(SystemExit) as exited:
        main.main(["gate", *[part for pair in flags.items() for part in pair]])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_a_missing_budget_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope"
    code = main.main(["gate", "--upstream", "http://127.0.0.1:1", "--budgets", str(missing)])
    assert code == 2
    err = capsys.readouterr().err
    assert f"--budgets {missing} does not exist: give the directory where the budget" in err
    (tmp_path / "file").write_text("x")
    code = main.main(
        ["gate", "--upstream", "http://127.0.0.1:1", "--budgets", str(tmp_path / "file")]
    )
    assert code == 2
    assert "is not a directory" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["big", "0", "-1", "1.5"])
def test_a_bad_body_limit_names_the_variable(value: str) -> None:
    with pytest.raises(ValueError, match=f"STOPBUDGET_GATE_MAX_BODY_BYTES='{value}' is not a"):
        gate.max_body({gate.MAX_BODY_ENV: value})


def test_body_limit_default_and_value() -> None:
    assert gate.max_body({}) == 16 * 1024 * 1024
    assert gate.max_body({gate.MAX_BODY_ENV: "1024"}) == 1024


def _get(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            body: bytes = response.read()
            return body
    except OSError:
        return None


@pytest.mark.slow
def test_the_command_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    budgets = tmp_path / "budgets"
    budgets.mkdir()
    (budgets / "default.output").write_text("2\n")
    question = "What is 1 + 2?"
    with ThreadedOpenAIServer({question: reply("3", 4)}) as server:
        port, metrics_port = servers.free_port(), servers.free_port()
        process = Process(
            [
                sys.executable, "-m", "stopbudget", "gate",
                "--upstream", server.url,
                "--budgets", str(budgets),
                "--listen", f"127.0.0.1:{port}",
                "--metrics-listen", f"127.0.0.1:{metrics_port}",
            ],
            tmp_path / "gate.log",
        )  # fmt: skip
        try:
            wait_for(
                lambda: _get(f"http://127.0.0.1:{metrics_port}/healthz"), timeout=30, what="gate"
            )
            body = {"model": MODEL, "prompt": question, "max_tokens": 100}
            answer = servers.http_json("POST", f"http://127.0.0.1:{port}/v1/completions", body)
            assert answer["choices"][0] == {
                "index": 0,
                "text": "step1 step2",
                "finish_reason": "length",
                "logprobs": None,
            }
            assert json.loads(server.bodies[-1]) == {**body, "max_tokens": 2}
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
        finally:
            if process.alive():
                process.kill()
    out = process.output()
    assert process.returncode == 0, out
    assert "budget default.output: none -> 2" in out
    assert f"gate on http://127.0.0.1:{port} -> {server.url} (engine vllm" in out
    assert out.rstrip().endswith("gate stopped")


@pytest.mark.slow
def test_a_taken_port_is_named(tmp_path: Path) -> None:
    port = servers.free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        done = subprocess.run(
            [
                sys.executable, "-m", "stopbudget", "gate",
                "--upstream", "http://127.0.0.1:1",
                "--budgets", str(tmp_path),
                "--listen", f"127.0.0.1:{port}",
                "--metrics-listen", "127.0.0.1:0",
            ],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert done.returncode == 2
    assert f"stopbudget gate: --listen 127.0.0.1:{port}: cannot listen: " in done.stderr
