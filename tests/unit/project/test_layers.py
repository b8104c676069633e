"""Layer contracts: the import-linter contracts hold, and the pure core never reads the clock."""

from __future__ import annotations

import ast
import configparser
import importlib.util
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def _pure_modules() -> list[str]:
    """The pure-core contract's modules, packages expanded to every module in them."""
    config = configparser.ConfigParser()
    config.read(ROOT / ".importlinter")
    modules: list[str] = []
    for name in config["importlinter:contract:pure-core"]["source_modules"].split():
        modules.append(name)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            found = pkgutil.walk_packages(spec.submodule_search_locations, prefix=f"{name}.")
            modules += sorted(m.name for m in found)
    return modules


def test_import_contracts_hold() -> None:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


CLOCK_CALLS = {
    ("datetime", "now"),
    ("datetime", "utcnow"),
    ("datetime", "today"),
    ("date", "today"),
    ("time", "time"),
    ("time", "monotonic"),
    ("time", "perf_counter"),
    ("time", "sleep"),
    ("random", "random"),
}


@pytest.mark.parametrize("module", _pure_modules())
def test_pure_module_never_reads_the_clock(module: str) -> None:
    spec = importlib.util.find_spec(module)
    assert spec is not None
    assert spec.origin is not None
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            name = owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", "")
            assert (name, node.func.attr) not in CLOCK_CALLS, (
                f"{module}:{node.lineno} calls {name}.{node.func.attr}: take `now` as an argument"
            )
