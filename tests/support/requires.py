"""Skips that name what is missing: a test that needs a real server binary, the real
kube-apiserver or llama-server skips with the reason (and how to get it) when it cannot run."""

from __future__ import annotations

import pytest

from stopbudget.devkit import apiserver, engine, servers


def require_binaries(*names: str) -> None:
    """Skip the calling test when a server binary is missing."""
    missing = servers.missing_binaries(*names)
    if missing:
        pytest.skip(
            f"{', '.join(missing)} not installed: `make test` installs the Debian packages "
            "prometheus and prometheus-alertmanager"
        )


def require_real_apiserver() -> None:
    """Skip the calling test, naming what is missing, when no real API server can run."""
    lacking = apiserver.missing()
    if lacking:
        pytest.skip(
            f"the real kube-apiserver needs {', '.join(lacking)}: it is in shared/k8s "
            "(CI has it; set STOPBUDGET_K8S_DIR) and `make test` installs etcd-server"
        )


def require_engine() -> None:
    """Skip the calling test, naming what is missing, when llama-server cannot run."""
    lacking = engine.missing()
    if lacking:
        pytest.skip(
            f"the llama-server tests need {', '.join(lacking)}: the archive is in "
            "shared/engines (CI has it) and `make test` installs the model"
        )
