from __future__ import annotations

import copy
from typing import Any

import pytest

# A minimal valid StopPolicy; tests copy and change it.
MINIMAL: dict[str, Any] = {
    "apiVersion": "stopbudget.io/v1alpha1",
    "kind": "StopPolicy",
    "metadata": {"name": "p", "namespace": "serving"},
    "spec": {
        "targetRef": {"name": "vllm"},
        "budget": {"min": 64, "max": 1024, "sink": {"type": "env", "name": "MAX_TOKENS"}},
        "quality": {"emTarget": 0.8, "emFloor": 0.7},
    },
}


@pytest.fixture
def policy() -> dict[str, Any]:
    """A fresh copy of a minimal valid StopPolicy document."""
    return copy.deepcopy(MINIMAL)
