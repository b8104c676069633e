"""Operator settings, read from environment variables with the prefix ``STOPBUDGET_``.

The Helm chart sets these; ``stopbudget run --help`` lists the command-line
equivalents of the common ones.  Every variable is documented on its field.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

PREFIX = "STOPBUDGET_"


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


class Settings(BaseModel):
    """What the operator process needs besides the StopPolicies themselves."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prometheus_url: str = Field(
        "http://127.0.0.1:9090",
        pattern=r"^https?://",
        description="Base URL of the Prometheus HTTP API (STOPBUDGET_PROMETHEUS_URL).",
    )
    prometheus_token_file: Path | None = Field(
        None,
        description="File holding a bearer token for Prometheus, re-read on every query so a "
        "rotated Secret is picked up (STOPBUDGET_PROMETHEUS_TOKEN_FILE).",
    )
    prometheus_ca_file: Path | None = Field(
        None, description="CA bundle to verify Prometheus' TLS certificate."
    )
    prometheus_insecure_skip_verify: bool = Field(
        False, description="Skip TLS verification of Prometheus (testing only)."
    )
    prometheus_timeout_seconds: float = Field(
        5.0, gt=0, le=120, description="Timeout of one Prometheus query."
    )
    query_window: str = Field(
        "2m",
        pattern=r"^[0-9]+(ms|s|m|h)$",
        description="Rate window of the presets' counter and histogram queries, e.g. 2m "
        "(at least 4 scrape intervals).",
    )
    namespaces: tuple[str, ...] = Field(
        (),
        description="Namespaces to watch, comma-separated; empty watches the whole cluster "
        "(STOPBUDGET_NAMESPACES).",
    )
    metrics_port: int = Field(
        8080, ge=0, le=65535, description="Port of /metrics, /healthz and /readyz (0: random)."
    )
    webhook_port: int = Field(
        8081, ge=0, le=65535, description="Port of the Alertmanager webhook (0: random)."
    )
    webhook_token_file: Path | None = Field(
        None,
        description="File holding the bearer token Alertmanager must send; without it the "
        "webhook is disabled (STOPBUDGET_WEBHOOK_TOKEN_FILE).",
    )
    bind_address: str = Field("0.0.0.0", description="Address the HTTP servers listen on.")  # noqa: S104
    log_format: LogFormat = Field(LogFormat.TEXT, description="text or json.")
    log_level: str = Field("INFO", description="Python logging level name.")
    kube_workers: int = Field(
        16,
        ge=1,
        le=256,
        description="Threads (and connections) for Kubernetes API calls: about 80-100 ticks/s "
        "with 16 (see make bench-operator).",
    )
    prometheus_max_concurrency: int = Field(
        8, ge=1, le=256, description="Prometheus queries in flight at once."
    )
    max_concurrent_audits: int = Field(
        4, ge=1, le=256, description="Audits running at once across all policies."
    )
    kopf_peering: bool = Field(
        False, description="Use kopf's peering (needs the kopf peering CRDs installed)."
    )

    @field_validator("namespaces", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(ns.strip() for ns in value.split(",") if ns.strip())
        return value


def from_env(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``STOPBUDGET_*`` variables; a ValueError names each bad variable."""
    env = os.environ if environ is None else environ
    raw = {
        name.removeprefix(PREFIX).lower(): value
        for name, value in env.items()
        if name.startswith(PREFIX) and name.removeprefix(PREFIX).lower() in Settings.model_fields
    }
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        lines = [
            f"{PREFIX}{str(e['loc'][0]).upper()}: {e['msg']}" for e in exc.errors(include_url=False)
        ]
        raise ValueError("invalid settings:\n  " + "\n  ".join(lines)) from None
