"""A whole StopPolicy object, its rules, and validation errors as (field, message) pairs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
)

from stopbudget.api.base import DNS_LABEL, DNS_SUBDOMAIN, PATTERN_HELP, CrossFieldRule, _Model
from stopbudget.api.spec import (
    OLD_KEYS,
    Budget,
    Load,
    Quality,
    Sink,
    StopPolicySpec,
    _renamed_at,
    missing_renamed_message,
    renamed_message,
)
from stopbudget.api.status import StopPolicyStatus

# --------------------------------------------------------------------------- the object


class ObjectMeta(BaseModel):
    """The part of metav1.ObjectMeta that ``stopbudget validate`` checks."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(max_length=253, pattern=DNS_SUBDOMAIN)
    namespace: str | None = Field(None, max_length=63, pattern=DNS_LABEL)
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class StopPolicy(_Model):
    """A whole StopPolicy object as written with kubectl."""

    api_version: Literal["stopbudget.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["StopPolicy"]
    metadata: ObjectMeta
    spec: StopPolicySpec
    status: StopPolicyStatus | None = None


def all_rules() -> dict[str, CrossFieldRule]:
    """Every cross-field rule of the API, by its CEL expression (as it appears in the CRD)."""
    found: dict[str, CrossFieldRule] = {}
    for model in (Sink, Budget, Quality, Load, StopPolicySpec):
        found |= {rule.cel: rule for rule in model.rules}
    return found


def problems_of(error: Any, *, cross_field: bool = True) -> list[tuple[str, str]]:
    """Flatten a pydantic ValidationError into ``(path.to.field, message)`` pairs.

    Cross-field errors carry their own field paths, which are appended to the
    location of the object they were found on; ``cross_field=False`` leaves
    them out (for callers that run the rules themselves).
    """
    out: list[tuple[str, str]] = []
    for err in error.errors(include_url=False):
        loc = [f"[{p}]" if type(p) is int else str(p) for p in err["loc"]]
        ctx = err.get("ctx") or {}
        if err["type"] == "cross_field":
            if not cross_field:
                continue
            for field, message in ctx["problems"]:
                out.append((_join(loc + field.split(".")), message))
        else:
            message = err["msg"]
            renamed = _renamed_at(tuple(err["loc"]))
            field = err["loc"][-1] if err["loc"] else None
            if (
                renamed is not None
                and err["type"] == "extra_forbidden"
                and isinstance(field, str)
                and field in OLD_KEYS[renamed[0]]
            ):
                message = renamed_message(field, *renamed, err["input"])
            elif renamed is not None and err["type"] == "missing" and loc[-1] == renamed[1]:
                if isinstance(err["input"], Mapping) and any(
                    k in err["input"] for k in OLD_KEYS[renamed[0]]
                ):
                    continue  # said once, at the old name
                message = missing_renamed_message(*renamed)
            elif err["type"] == "extra_forbidden":
                message = "unknown field: remove it or check its spelling"
            elif err["type"] == "value_error":
                message = message.removeprefix("Value error, ")
            elif err["type"] == "string_pattern_mismatch" and ctx.get("pattern") in PATTERN_HELP:
                message = f"{err['input']!r} {PATTERN_HELP[ctx['pattern']]}"
            out.append((_join(loc), message))
    return out


def _join(parts: list[str]) -> str:
    text = ""
    for p in parts:
        text += p if p.startswith("[") or not text else "." + p
    return text or "(document)"
