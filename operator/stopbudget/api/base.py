"""What every API object shares: camelCase JSON, cross-field rules, patterns, bounds."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from stopbudget.api.durations import DURATION_PATTERN

# --------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class CrossFieldRule:
    """A rule over several fields of one object, checked by the API server and in Python.

    ``cel`` is evaluated by the API server with ``self`` bound to the object in
    its JSON form (defaults applied, absent optional fields absent).  ``check``
    is the same rule in Python over the same JSON form: pydantic runs it on a
    validated object, and ``stopbudget validate`` runs it wherever the API server
    would, even when a sibling object is already invalid.  ``field`` is the
    offending field relative to the object (CRD ``fieldPath``, without the dot).
    """

    cel: str
    message: str
    field: str
    check: Callable[[Mapping[str, Any]], bool]

    def crd(self) -> dict[str, str]:
        return {
            "rule": self.cel,
            "message": self.message,
            "fieldPath": "." + self.field,
            "reason": "FieldValueInvalid",
        }


def _rules_schema(rules: tuple[CrossFieldRule, ...]) -> dict[str, Any]:
    return {"x-kubernetes-validations": [r.crd() for r in rules]}


def _list_map(*keys: str) -> dict[str, Any]:
    """A list the API server merges and checks as a map keyed by ``keys`` (unique keys)."""
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": list(keys)}


#: A list of distinct scalars, checked by the API server.
_LIST_SET: dict[str, Any] = {"x-kubernetes-list-type": "set"}


class _Model(BaseModel):
    """Base of every API object: camelCase on the wire, unknown fields rejected, immutable."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_enum_values=False,
    )

    #: Cross-field rules of this object; see :class:`CrossFieldRule`.
    rules: ClassVar[tuple[CrossFieldRule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> Any:
        if not self.rules:
            return self
        data = self.to_json()
        problems = [(r.field, r.message) for r in self.rules if not r.check(data)]
        if problems:
            raise PydanticCustomError(
                "cross_field",
                "{summary}",
                {"summary": "; ".join(f"{f}: {m}" for f, m in problems), "problems": problems},
            )
        return self

    def to_json(self) -> dict[str, Any]:
        """The object as Kubernetes stores it: camelCase keys, no nulls, durations as strings."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def _no_duplicates(what: str) -> Callable[[list[Any]], list[Any]]:
    def check(values: list[Any]) -> list[Any]:
        keys = [getattr(v, "budget", getattr(v, "name", v)) for v in values]
        dups = sorted({k for k in keys if keys.count(k) > 1}, key=str)
        if dups:
            raise ValueError(f"duplicate {what} {dups}: list each {what} once")
        return values

    return check


# --------------------------------------------------------------------------- patterns

#: A DNS-1123 subdomain, the syntax of Deployment and ConfigMap names.
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
#: A DNS-1123 label, the syntax of container names.
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
ENV_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
CONFIGMAP_KEY = r"^[-._a-zA-Z0-9]+$"
ANNOTATION_KEY = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
LABEL_NAME = r"^[a-zA-Z_][a-zA-Z0-9_]*$"
SIGNAL_NAME = r"^[a-zA-Z][a-zA-Z0-9_]*$"
#: Cron: five or six fields, or one of the @ macros.  Field contents are checked by the operator.
CRON_SHAPE = r"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|(\S+\s+){4,5}\S+)$"

ENDPOINT_URL = r"^https?://[^\s/]+"
NOT_BLANK = r"\S"

#: What each pattern means, for messages that name the fix instead of quoting a regex.
PATTERN_HELP: Mapping[str, str] = {
    DNS_SUBDOMAIN: "is not a Kubernetes name: use lowercase letters, digits, '-' and '.', "
    "starting and ending with a letter or digit, e.g. vllm-llama",
    DNS_LABEL: "is not a container name: use lowercase letters, digits and '-', "
    "starting and ending with a letter or digit, e.g. vllm",
    LABEL_NAME: "is not a Prometheus label name: use letters, digits and '_', e.g. model_name",
    SIGNAL_NAME: "is not a signal name: start with a letter, then letters, digits or '_'",
    CONFIGMAP_KEY: "is not a ConfigMap key: use letters, digits, '-', '_' and '.'",
    CRON_SHAPE: "is not a cron expression: use five fields 'minute hour day month weekday', "
    "e.g. '0 3 * * *', or a macro such as @daily",
    ENDPOINT_URL: "is not an http(s) URL: write e.g. http://vllm.serving:8000",
    NOT_BLANK: "is blank: write a PromQL expression",
    DURATION_PATTERN: "is not a duration: write a number followed by ms, s, m or h, "
    "e.g. 30s, 5m or 1h30m",
}

_MAX_BUDGET = 10_000_000

TokenBudget = Annotated[int, Field(ge=1, le=_MAX_BUDGET)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
