"""``stopbudget audit`` end to end against the OpenAI-compatible test server."""

from __future__ import annotations

import argparse
import importlib.util
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from stopbudget.cli import audit as audit_command
from stopbudget.core.curve import wilson_lower
from tests.support.openai_server import MODEL, OpenAIServer, ThreadedOpenAIServer
from tests.unit.clients.test_audit_runner import ITEMS, QUESTIONS, REPLIES, expected_curve


@pytest.fixture(scope="module")
def server() -> Iterator[OpenAIServer]:
    with ThreadedOpenAIServer(REPLIES) as s:
        yield s


@pytest.fixture
def golden(tmp_path: Path) -> Path:
    path = tmp_path / "golden.jsonl"
    lines = [json.dumps({"question": i.question, "answers": list(i.answers)}) for i in ITEMS]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def audit(*args: str) -> int:
    """Run ``stopbudget audit ARGS`` through :func:`audit_command.add_parser`."""
    top = argparse.ArgumentParser(prog="stopbudget")
    audit_command.add_parser(top.add_subparsers(dest="command", required=True))
    parsed = top.parse_args(["audit", *args])
    code: int = parsed.func(parsed)
    return code


def base(server: OpenAIServer, golden: Path, *extra: str) -> list[str]:
    return [
        "--endpoint",
        server.url,
        "--model",
        MODEL,
        "--dataset",
        str(golden),
        "--budgets",
        "64,16,128,32",
        "--sample",
        "1000",
        "--min-samples",
        "10",
        *extra,
    ]


def table_rows(stdout: str) -> list[list[str]]:
    lines = stdout.splitlines()
    assert lines[0].split() == [
        "budget",
        "EM",
        "lower",
        "samples",
        "errors",
        "truncated",
        "mean",
        "tokens",
    ]
    return [line.split() for line in lines[1:5]]


@pytest.mark.parametrize("method", ["direct", "truncate"])
def test_prints_the_known_curve(
    server: OpenAIServer, golden: Path, capsys: pytest.CaptureFixture[str], method: str
) -> None:
    assert audit(*base(server, golden, "--method", method, "--api", "chat")) == 0
    out = capsys.readouterr().out
    expected = [
        [
            str(p.budget),
            f"{p.em:.3f}",
            f"{wilson_lower(p.hits, p.samples, 0.95):.3f}",
            str(p.samples),
            "0",
            str(p.truncated),
            f"{p.mean_tokens:.1f}",
        ]
        for p in expected_curve((16, 32, 64, 128))
    ]
    assert table_rows(out) == expected
    requests = QUESTIONS if method == "truncate" else QUESTIONS * 4
    assert f"{QUESTIONS} of {QUESTIONS} questions, method {method}, {requests} requests" in out


@pytest.mark.slow
def test_sample_and_plot(
    server: OpenAIServer, golden: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png = tmp_path / "curve.png"
    args = base(server, golden, "--sample", "20", "--seed", "3", "--plot", str(png))
    assert audit(*args) == 0
    out = capsys.readouterr().out
    assert f"20 of {QUESTIONS} questions" in out
    assert f"plot written to {png}" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib(
    server: OpenAIServer,
    golden: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name)
    )
    assert audit(*base(server, golden, "--plot", "x.png")) == 2
    assert "--plot needs matplotlib: install stopbudget[plot]" in capsys.readouterr().err


def test_a_failed_audit_still_prints_its_curve(
    server: OpenAIServer, golden: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert audit(*base(server, golden, "--min-samples", "100")) == 1
    captured = capsys.readouterr()
    assert len(table_rows(captured.out)) == 4
    assert "the audit failed: too few answers: budget 16: 60 (0 failed)" in captured.err
    assert "minSamples is 100, so this curve is not used" in captured.err


def test_truncate_fallback_is_reported(golden: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with ThreadedOpenAIServer(REPLIES, logprobs=False) as s:
        assert audit(*base(s, golden, "--method", "truncate")) == 0
    captured = capsys.readouterr()
    assert "method direct" in captured.out
    assert "note: truncate: the server returned no token-level output" in captured.err


def test_bad_dataset_lines_are_listed(
    server: OpenAIServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "q", "answer": "1"}\n{"answer": "2"}\n\nnot json\n')
    assert audit(*base(server, path)) == 2
    assert capsys.readouterr().err.splitlines() == [
        f'{path}: line 2: missing "question" or "prompt"',
        f"{path}: line 4: not valid JSON: Expecting value (column 1)",
    ]


def test_missing_dataset(server: OpenAIServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert audit(*base(server, Path("/nonexistent/golden.jsonl"))) == 2
    assert (
        "stopbudget audit: cannot read the dataset /nonexistent/golden.jsonl: "
        "No such file or directory" in capsys.readouterr().err
    )


def test_unreachable_endpoint(golden: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = ["--endpoint", f"http://127.0.0.1:{port}", "--model", "m", "--dataset", str(golden)]
    assert audit(*args, "--budgets", "16", "--retries", "0") == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "the audit failed: the endpoint is unreachable: cannot reach" in captured.err


@pytest.mark.parametrize(
    ("budgets", "message"),
    [
        ("128,abc", "'abc' is not a budget: give positive token counts"),
        ("0,128", "'0' is not a budget"),
        ("128,128", "budget 128 is listed twice"),
        (",", "give budgets as a comma-separated list"),
        ("-5", "'-5' is not a budget"),
    ],
)
def test_bad_budgets(
    golden: Path, capsys: pytest.CaptureFixture[str], budgets: str, message: str
) -> None:
    with pytest.raises(SystemExit) as caught:
        audit(
            "--endpoint",
            "http://x",
            "--model",
            "m",
            "--dataset",
            str(golden),
            f"--budgets={budgets}",
        )
    assert caught.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--answer-pattern", r"\d+"], "has no capture group"),
        (["--answer-pattern", "(unclosed"], "is not a regex"),
        (["--endpoint", "vllm:8000"], "is not an http(s) URL"),
        (["--plot", "/nonexistent/dir/curve.png"], "the directory of /nonexistent/dir/curve.png"),
        (["--api-key-env", "STOPBUDGET_TEST_UNSET_KEY"], "STOPBUDGET_TEST_UNSET_KEY is empty"),
    ],
)
def test_bad_options(
    server: OpenAIServer,
    golden: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    assert audit(*base(server, golden), *extra) == 2
    assert message in capsys.readouterr().err


def test_parse_budgets_sorts() -> None:
    assert audit_command.parse_budgets(" 512, 128 ,256 ") == (128, 256, 512)


def test_choices_are_the_api_enums() -> None:
    from stopbudget.api import AuditApi, AuditMethod

    assert set(audit_command.METHODS) == {m.value for m in AuditMethod}
    assert set(audit_command.APIS) == {a.value for a in AuditApi}


def test_building_the_parser_loads_no_heavy_module() -> None:
    import subprocess
    import sys

    code = (
        "import argparse, sys; from stopbudget.cli import audit as audit_command; "
        "p = argparse.ArgumentParser(); audit_command.add_parser(p.add_subparsers()); "
        "heavy = ('aiohttp', 'pydantic', 'tqdm', 'matplotlib'); "
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
