"""The README shows the two set-up commands and the numbers the benchmark commands print."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_shows_the_two_commands() -> None:
    assert "make demo" in README
    assert "make test" in README
    assert "make test" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


@pytest.mark.slow
def test_simulator_table_in_readme_is_what_the_command_prints() -> None:
    command = re.search(r"\$ (stopbudget simulate --trace [^\n]*conv[^\n]*)", README)
    assert command is not None, "the README names the simulate command it shows"
    args = command.group(1).split()[1:]
    done = subprocess.run(
        [sys.executable, "-m", "stopbudget", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert len(rows) >= 8  # the header and seven strategies
    for row in rows:
        assert row in README, f"README is out of date: run `make bench` and copy: {row}"
