"""operator/ is a source root: the package is stopbudget, and `import operator` stays Python's."""

from __future__ import annotations

import importlib
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_import_operator_is_the_standard_module() -> None:
    operator = importlib.import_module("operator")
    assert operator.add(2, 3) == 5
    assert Path(operator.__file__ or "").parent == Path(sysconfig.get_paths()["stdlib"])
    assert not (ROOT / "operator" / "__init__.py").exists()


def test_package_and_version() -> None:
    import stopbudget

    assert Path(stopbudget.__file__).parent == ROOT / "operator" / "stopbudget"
    assert stopbudget.__version__ == "0.1.0"
