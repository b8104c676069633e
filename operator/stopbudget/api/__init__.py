"""The StopPolicy API: one source of truth for the spec, the status and their rules.

Everything a user writes in a ``StopPolicy`` and everything the operator reports
back is declared here as pydantic v2 models.  The CRD (``stopbudget crd``), the
API reference (``stopbudget docs``) and ``stopbudget validate`` are all derived
from these models, so a field exists in exactly one place.

Cross-field rules are declared once as :class:`CrossFieldRule` values: each has
a CEL expression (emitted into the CRD as ``x-kubernetes-validations`` so the API
server rejects a bad policy at ``kubectl apply``) and the same check in Python
(run by the pydantic validators, so ``stopbudget validate`` and the operator
agree with the API server).  ``tests/test_api_rules.py`` evaluates both on the
same inputs so they cannot drift apart.

This module is pure: no I/O, no clock, no Kubernetes client.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from croniter import croniter
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    PlainSerializer,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError, core_schema

GROUP = "stopbudget.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "StopPolicy"
PLURAL = "stoppolicies"
SINGULAR = "stoppolicy"
SHORT_NAMES = ("sp",)

#: Annotation on a StopPolicy that pauses it like ``spec.control.mode: Paused``.
ANNOTATION_PAUSED = f"{GROUP}/paused"
#: Annotation on a StopPolicy that asks for one audit; removed when the audit starts.
ANNOTATION_AUDIT_REQUESTED = f"{GROUP}/audit-requested"


# --------------------------------------------------------------------------- durations

_DURATION_PART = r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)"
#: Anchored pattern of a duration string such as ``30s``, ``5m``, ``1h30m`` or ``250ms``.
#: A subset of Go's ``time.ParseDuration`` syntax, so CEL's ``duration()`` accepts it too.
DURATION_PATTERN = rf"^({_DURATION_PART})+$"
_DURATION_RE = re.compile(DURATION_PATTERN)
_DURATION_PART_RE = re.compile(_DURATION_PART)
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> timedelta:
    """Parse ``30s``/``5m``/``1h30m``/``250ms`` into a timedelta; ValueError names the fix."""
    if not isinstance(text, str) or not _DURATION_RE.match(text):
        raise ValueError(
            f"{text!r} is not a duration: write a number followed by ms, s, m or h, "
            "e.g. 30s, 5m or 1h30m"
        )
    seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART_RE.findall(text))
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """The shortest duration string for ``value`` that :func:`parse_duration` reads back."""
    total_ms = round(value.total_seconds() * 1000)
    if total_ms == 0:
        return "0s"
    hours, rest = divmod(total_ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else ""]
    if millis and not (hours or minutes or seconds):
        parts.append(f"{millis}ms")
    elif millis:
        parts.append(f"{seconds}.{millis:03d}".rstrip("0") + "s")
    elif seconds:
        parts.append(f"{seconds}s")
    return "".join(parts)


def _to_duration(value: object) -> object:
    if isinstance(value, str):
        return parse_duration(value)
    if isinstance(value, timedelta):
        return value
    raise ValueError(
        f"{value!r} is not a duration: write a string such as 30s, 5m or 1h30m "
        "(a bare number is ambiguous)"
    )


Duration = Annotated[
    timedelta,
    BeforeValidator(_to_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN, "maxLength": 32}),
]


@dataclass(frozen=True)
class Within:
    """Bounds of a :data:`Duration` field, checked by pydantic and by a CEL rule in the CRD."""

    low: str
    high: str

    def _check(self, value: timedelta) -> timedelta:
        if not parse_duration(self.low) <= value <= parse_duration(self.high):
            raise ValueError(
                f"must be between {self.low} and {self.high}, got {format_duration(value)}"
            )
        return value

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> dict[str, Any]:
        json_schema = dict(handler(schema))
        json_schema["x-kubernetes-validations"] = [
            {
                "rule": f"duration(self) >= duration('{self.low}') && "
                f"duration(self) <= duration('{self.high}')",
                "message": f"must be a duration between {self.low} and {self.high}",
            }
        ]
        return json_schema


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


# --------------------------------------------------------------------------- spec: target


class TargetRef(_Model):
    """The serving workload whose token budget this policy controls (same namespace)."""

    kind: Literal["Deployment"] = Field(
        "Deployment", description="Kind of the target. Only Deployment is supported."
    )
    name: str = Field(max_length=253, pattern=DNS_SUBDOMAIN, description="Name of the Deployment.")
    container: str | None = Field(
        None,
        max_length=63,
        pattern=DNS_LABEL,
        description=(
            "Container that serves the model, for env and arg sinks. "
            "Optional when the pod has a single container."
        ),
    )


# --------------------------------------------------------------------------- spec: budget


class SinkType(StrEnum):
    """Where the budget is written."""

    ENV = "env"
    ARG = "arg"
    ANNOTATION = "annotation"
    CONFIG_MAP = "configMap"


#: Sinks whose change rolls the pods (pod template); the others are read live.
RESTARTING_SINKS = frozenset({SinkType.ENV, SinkType.ARG})

BUDGET_PLACEHOLDER = "{budget}"


class Sink(_Model):
    """How the budget reaches the server: env var, container arg, annotation or ConfigMap key."""

    rules: ClassVar[tuple[CrossFieldRule, ...]] = (
        CrossFieldRule(
            "self.type != 'configMap' || has(self.configMapName)",
            "configMapName is required when type is configMap: name the ConfigMap that holds "
            "the key",
            "configMapName",
            lambda s: s["type"] != "configMap" or "configMapName" in s,
        ),
        CrossFieldRule(
            "self.type == 'configMap' || !has(self.configMapName)",
            "configMapName is only used when type is configMap: remove it or set type: configMap",
            "configMapName",
            lambda s: s["type"] == "configMap" or "configMapName" not in s,
        ),
        CrossFieldRule(
            "self.type != 'env' || self.name.matches(r'" + ENV_NAME + "')",
            "name of an env sink must be an environment variable name, e.g. MAX_TOKENS",
            "name",
            lambda s: s["type"] != "env" or re.match(ENV_NAME, s["name"]) is not None,
        ),
        CrossFieldRule(
            "self.type != 'arg' || self.name.startsWith('-')",
            "name of an arg sink is the flag whose value is set, e.g. --max-tokens",
            "name",
            lambda s: s["type"] != "arg" or s["name"].startswith("-"),
        ),
        CrossFieldRule(
            "self.type != 'annotation' || self.name.matches(r'" + ANNOTATION_KEY + "')",
            "name of an annotation sink must be an annotation key, e.g. stopbudget.io/max-tokens",
            "name",
            lambda s: s["type"] != "annotation" or re.match(ANNOTATION_KEY, s["name"]) is not None,
        ),
        CrossFieldRule(
            "self.type != 'configMap' || self.name.matches(r'" + CONFIGMAP_KEY + "')",
            "name of a configMap sink must be a ConfigMap key (letters, digits, - _ .)",
            "name",
            lambda s: s["type"] != "configMap" or re.match(CONFIGMAP_KEY, s["name"]) is not None,
        ),
        CrossFieldRule(
            "!has(self.format) || self.format.contains('{budget}')",
            "format must contain the placeholder {budget}, e.g. '{\"max_new_tokens\": {budget}}'",
            "format",
            lambda s: "format" not in s or BUDGET_PLACEHOLDER in s["format"],
        ),
    )
    model_config = ConfigDict(json_schema_extra=_rules_schema(rules))

    type: SinkType = Field(
        description=(
            "env: an environment variable of the container; arg: the value of a container "
            "argument; annotation: an annotation on the Deployment's metadata (no restart); "
            "configMap: a key of a ConfigMap read by a gateway or proxy (no restart). "
            "env and arg change the pod template and roll the pods."
        )
    )
    name: str = Field(
        min_length=1,
        max_length=253,
        description=(
            "env: the variable name; arg: the flag, e.g. --override-generation-config (both "
            "'--flag=value' and '--flag value' forms are found); annotation: the annotation "
            "key; configMap: the key in the ConfigMap."
        ),
    )
    config_map_name: str | None = Field(
        None,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description="Name of the ConfigMap for type configMap (same namespace).",
    )
    format: str | None = Field(
        None,
        max_length=1024,
        description=(
            "Template of the value written, with {budget} replaced by the budget, e.g. "
            "'{\"max_new_tokens\": {budget}}' for vLLM's --override-generation-config. "
            "Default: '{budget}'."
        ),
    )

    def render(self, budget: int) -> str:
        """The value written for ``budget``."""
        return (self.format or BUDGET_PLACEHOLDER).replace(BUDGET_PLACEHOLDER, str(budget))

    def parse(self, value: str) -> int | None:
        """The budget in a value written by :meth:`render`; None if it does not fit the format."""
        template = self.format or BUDGET_PLACEHOLDER
        pattern = "([0-9]+)".join(re.escape(p) for p in template.split(BUDGET_PLACEHOLDER))
        match = re.fullmatch(pattern, value.strip())
        if match is None or len(set(match.groups())) != 1:
            return None
        return int(match.group(1))


class BudgetKind(StrEnum):
    """Which token budget is controlled."""

    OUTPUT = "output"
    THINKING = "thinking"


class Budget(_Model):
    """Bounds of the token budget and where it is written."""

    rules: ClassVar[tuple[CrossFieldRule, ...]] = (
        CrossFieldRule(
            "self.min <= self.max",
            "min must not exceed max: lower budget.min or raise budget.max",
            "min",
            lambda b: b["min"] <= b["max"],
        ),
        CrossFieldRule(
            "!has(self.initial) || (self.initial >= self.min && self.initial <= self.max)",
            "initial must lie within [min, max]: set budget.initial between them, "
            "or leave it out to start at max",
            "initial",
            lambda b: "initial" not in b or b["min"] <= b["initial"] <= b["max"],
        ),
    )
    model_config = ConfigDict(json_schema_extra=_rules_schema(rules))

    min: TokenBudget = Field(description="Lowest budget the operator may set, in tokens.")
    max: TokenBudget = Field(description="Highest budget the operator may set, in tokens.")
    initial: TokenBudget | None = Field(
        None,
        description=(
            "Budget used before any measurement (no prior, no audit) and by fallback "
            "behavior 'target' when nothing better is known. Default: max."
        ),
    )
    step: TokenBudget = Field(
        1, description="Quantum: every budget set is a multiple of step (clamped to [min, max])."
    )
    kind: BudgetKind = Field(
        BudgetKind.OUTPUT,
        description="output: max new tokens per request; thinking: the reasoning budget.",
    )
    sink: Sink = Field(description="Where the budget is written.")

    @property
    def start(self) -> int:
        return self.initial if self.initial is not None else self.max


# --------------------------------------------------------------------------- spec: quality


#: Fields renamed within v1alpha1 (no conversion webhook), by the list whose items hold
#: them: ``{list: (old, new)}``.  ``n`` became ``samples`` because Go's YAML 1.1 parsers
#: (kubectl, Helm, client-go) read a plain ``n`` as the boolean false, so kubectl sent the
#: field as ``"false"`` and the committed CRD was rejected.
RENAMED: Mapping[str, tuple[str, str]] = {"prior": ("n", "samples"), "curve": ("n", "samples")}
#: The keys an old ``n`` arrives as: itself, or as a YAML 1.1 parser read it (``false``).
OLD_KEYS: Mapping[str, tuple[object, ...]] = {"n": ("n", "false", False)}


def renamed_message(key: object, old: str, new: str, value: object) -> str:
    """What to say about ``key: value`` found where ``old`` was renamed ``new``."""
    if key == old:
        return f"{old} is now called {new}: write {new}: {value} instead"
    return (
        f"{str(key).lower()} is the old field {old} as kubectl and Helm read it "
        f"(YAML 1.1 reads a plain {old} as false): write {new}: {value} instead"
    )


def missing_renamed_message(old: str, new: str) -> str:
    """What to say when a renamed field is missing: a stored ``old`` was pruned."""
    return (
        f"Field required: {new} was called {old} before, and the API server drops an {old} it "
        f"no longer knows: write {new}: <count> in this item and apply the policy again "
        "(README: Upgrading)"
    )


def _renamed_at(loc: tuple[Any, ...]) -> tuple[str, str] | None:
    """(old, new) when ``loc`` ends in ``<list>[i].<field>`` of a list in :data:`RENAMED`."""
    if len(loc) >= 3 and isinstance(loc[-2], int) and isinstance(loc[-3], str):
        return RENAMED.get(loc[-3])
    return None


class PriorPoint(_Model):
    """One point of an offline EM-vs-budget evaluation."""

    budget: TokenBudget = Field(description="Budget evaluated, in tokens.")
    em: Fraction = Field(description="Exact-Match rate measured at this budget, in [0, 1].")
    samples: int = Field(
        ge=1, le=1_000_000, description="Number of questions behind em (formerly n)."
    )


class Quality(_Model):
    """Answer-quality targets and the evidence used before the first audit."""

    rules: ClassVar[tuple[CrossFieldRule, ...]] = (
        CrossFieldRule(
            "self.emFloor <= self.emTarget",
            "emFloor must not exceed emTarget: the floor is the lowest EM tolerated, "
            "the target the EM aimed for",
            "emFloor",
            lambda q: q["emFloor"] <= q["emTarget"],
        ),
    )
    model_config = ConfigDict(json_schema_extra=_rules_schema(rules))

    em_target: Fraction = Field(
        description="Exact-Match rate to aim for: the cheapest budget whose EM lower bound "
        "reaches it is chosen when there is no load pressure."
    )
    em_floor: Fraction = Field(
        description="Lowest Exact-Match rate tolerated: under load the budget never goes "
        "below the cheapest budget that keeps EM above it."
    )
    confidence: float = Field(
        0.95,
        ge=0.5,
        le=0.999,
        description="Confidence of the Wilson lower bound used to decide that a budget meets "
        "a target (higher is more cautious).",
    )
    query: str | None = Field(
        None,
        min_length=1,
        max_length=4096,
        pattern=NOT_BLANK,
        description="Optional PromQL returning the live EM (or a proxy of it) in [0, 1]; "
        "below emFloor the budget goes up at once and an audit is requested.",
    )
    min_samples: int = Field(
        30,
        ge=1,
        le=100_000,
        description="Fewest answers per budget for an audit to count; fewer and the audit "
        "fails and its curve is not used.",
    )
    prior: Annotated[list[PriorPoint], AfterValidator(_no_duplicates("prior budget"))] = Field(
        default_factory=list,
        max_length=64,
        json_schema_extra=_list_map("budget"),
        description="EM-vs-budget points from an offline evaluation, used until the first "
        "audit has measured the curve.",
    )


# --------------------------------------------------------------------------- spec: cost


class Priority(StrEnum):
    """What wins when the EM floor needs more tokens than the cost cap allows."""

    QUALITY = "quality"
    COST = "cost"


class Cost(_Model):
    """Cost targets."""

    max_tokens_per_request: TokenBudget | None = Field(
        None,
        description="Cap on the budget for cost reasons; with priority quality it is "
        "exceeded when the EM floor needs more.",
    )
    price_per_million_tokens: float | None = Field(
        None,
        ge=0,
        le=1_000_000,
        description="Price of a million generated tokens, for the cost figures in metrics.",
    )
    priority: Priority = Field(
        Priority.QUALITY,
        description="quality: the EM floor beats the cost cap; cost: the cap beats the floor.",
    )


# --------------------------------------------------------------------------- spec: load


class Preset(StrEnum):
    """Serving engines whose standard metrics the operator knows."""

    VLLM = "vllm"
    SGLANG = "sglang"
    TGI = "tgi"
    LLAMACPP = "llamacpp"
    NONE = "none"


#: The load signals each preset provides; their queries live in ``promql.py``.
PRESET_SIGNALS: Mapping[Preset, tuple[str, ...]] = {
    Preset.VLLM: ("queue", "kvCache", "latencyP95"),
    Preset.SGLANG: ("queue", "kvCache", "latencyP95"),
    Preset.TGI: ("queue", "latencyP95"),
    # llama.cpp's server has no latency histogram (and no labels on its series).
    Preset.LLAMACPP: ("queue", "running", "tokensPerSecond"),
    Preset.NONE: (),
}


def _preset_signal_cel() -> str:
    arms = [
        f"(self.preset == '{p.value}' && s.name in {list(names)!r})"
        for p, names in PRESET_SIGNALS.items()
        if names
    ]
    return "!has(self.signals) || self.signals.all(s, has(s.query) || " + " || ".join(arms) + ")"


def _preset_signal_help() -> str:
    listed = "; ".join(f"{p.value}: {', '.join(n)}" for p, n in PRESET_SIGNALS.items() if n)
    return f"({listed})"


class Signal(_Model):
    """One load signal: its pressure is value / target; the policy's is the max over signals."""

    name: str = Field(
        max_length=63,
        pattern=SIGNAL_NAME,
        description="Name of the signal; without a query it names a signal of load.preset "
        + _preset_signal_help()
        + ".",
    )
    query: str | None = Field(
        None,
        min_length=1,
        max_length=4096,
        pattern=NOT_BLANK,
        description="PromQL returning one number. Leave out to use the preset's query for name.",
    )
    target: float = Field(
        gt=0,
        le=1e12,
        description="Value at which the serving is exactly at capacity (pressure 1).",
    )


class Load(_Model):
    """How load is measured."""

    rules: ClassVar[tuple[CrossFieldRule, ...]] = (
        CrossFieldRule(
            _preset_signal_cel(),
            "every signal needs a query unless its name is a signal of the preset "
            + _preset_signal_help()
            + ": add a query or set load.preset",
            "signals",
            lambda load: all(
                "query" in sig or sig["name"] in PRESET_SIGNALS[Preset(load.get("preset", "none"))]
                for sig in load.get("signals", [])
            ),
        ),
    )
    model_config = ConfigDict(json_schema_extra=_rules_schema(rules))

    preset: Preset = Field(
        Preset.NONE, description="Serving engine whose standard metrics name the signals."
    )
    selector: dict[
        Annotated[str, Field(pattern=LABEL_NAME, max_length=128)],
        Annotated[str, Field(max_length=1024)],
    ] = Field(
        default_factory=dict,
        max_length=16,
        description="Label matchers (label: value, exact match) that pick the preset's series, "
        "e.g. {namespace: serving, model_name: llama-3-8b}.",
    )
    signals: Annotated[list[Signal], AfterValidator(_no_duplicates("signal name"))] = Field(
        default_factory=list,
        max_length=16,
        json_schema_extra=_list_map("name"),
        description="Load signals; with none, pressure is 0 and the budget follows the EM target.",
    )


# --------------------------------------------------------------------------- spec: control


class Mode(StrEnum):
    """Auto patches the target; Recommend only writes status.recommendation; Paused does nothing."""

    AUTO = "Auto"
    RECOMMEND = "Recommend"
    PAUSED = "Paused"


class FallbackBehavior(StrEnum):
    """What to do when metrics have failed failureThreshold times in a row."""

    HOLD = "hold"
    TARGET = "target"
    MAX = "max"


class Fallback(_Model):
    """Behavior when Prometheus fails or returns no data."""

    failure_threshold: int = Field(
        3, ge=1, le=1000, description="Failed ticks in a row before the fallback applies."
    )
    behavior: FallbackBehavior = Field(
        FallbackBehavior.HOLD,
        description="hold: keep the current budget; target: the EM-target budget without "
        "load adjustment; max: budget.max.",
    )


class Control(_Model):
    """How the budget moves."""

    mode: Mode = Field(Mode.AUTO, description="Auto, Recommend (never patches) or Paused.")
    interval: Annotated[Duration, Within("1s", "1h")] = Field(
        timedelta(seconds=30), description="Time between two evaluations, e.g. 30s."
    )
    cooldown: Annotated[Duration, Within("0s", "24h")] = Field(
        timedelta(minutes=5),
        description="Least time between two patches of a sink that restarts pods (env, arg); "
        "a raise for quality is never delayed.",
    )
    downscale_stabilization: Annotated[Duration, Within("0s", "24h")] = Field(
        timedelta(minutes=5),
        description="The budget goes down only to the highest budget recommended within "
        "this window (as HPA's scale-down stabilization).",
    )
    max_step_up: TokenBudget | None = Field(
        None, description="Largest raise in one move, in tokens. Default: unlimited."
    )
    max_step_down: TokenBudget | None = Field(
        None, description="Largest cut in one move, in tokens. Default: unlimited."
    )
    tolerance: float = Field(
        0.1,
        ge=0.0,
        le=0.9,
        description="Relative change ignored (hysteresis): a new budget within this fraction "
        "of the current one is not applied.",
    )
    fallback: Fallback = Field(default_factory=Fallback, description="Behavior without metrics.")


# --------------------------------------------------------------------------- spec: audit


class AuditMethod(StrEnum):
    """How an audit measures EM at each budget of the ladder."""

    DIRECT = "direct"
    TRUNCATE = "truncate"


class AuditApi(StrEnum):
    """Which OpenAI-compatible endpoint the audit calls."""

    CHAT = "chat"
    COMPLETIONS = "completions"


class ConfigMapRef(_Model):
    """A ConfigMap in the policy's namespace."""

    name: str = Field(max_length=253, pattern=DNS_SUBDOMAIN, description="ConfigMap name.")


class Dataset(_Model):
    """The golden QA set: JSONL in a ConfigMap key, one {question, answers} per line."""

    config_map_ref: ConfigMapRef = Field(description="ConfigMap that holds the golden set.")
    key: str = Field(
        "golden.jsonl", max_length=253, pattern=CONFIGMAP_KEY, description="Key of the JSONL."
    )


class AlertMatch(_Model):
    """Which Alertmanager alerts trigger an audit of this policy."""

    match_labels: dict[
        Annotated[str, Field(pattern=LABEL_NAME, max_length=128)],
        Annotated[str, Field(max_length=1024)],
    ] = Field(
        default_factory=dict,
        max_length=16,
        description="Alert labels that select this policy, besides the labels stoppolicy and "
        "namespace which always do.",
    )
    raise_budget_on_firing: bool = Field(
        False,
        description="On a firing alert, raise the budget to the EM-target budget at once, "
        "before the audit result is known.",
    )


def _check_cron(value: str | None) -> str | None:
    if value is not None and not croniter.is_valid(value):
        raise ValueError(
            f"{value!r} is not a cron expression: use five fields 'minute hour day month "
            "weekday', e.g. '0 3 * * *', or a macro such as @daily"
        )
    return value


def _check_regex(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        compiled = re.compile(value)
    except re.error as exc:
        raise ValueError(f"{value!r} is not a regular expression: {exc}") from None
    if compiled.groups < 1:
        raise ValueError(
            f"{value!r} has no capture group: put the answer in parentheses, "
            "e.g. 'answer is (\\S+)'"
        )
    return value


class Audit(_Model):
    """How and when the EM-vs-budget curve is measured against the live model."""

    schedule: Annotated[str | None, AfterValidator(_check_cron)] = Field(
        None,
        max_length=128,
        pattern=CRON_SHAPE,
        description="Cron schedule of audits (UTC), e.g. '0 3 * * *'. Without it audits run "
        "only on demand and on alerts.",
    )
    endpoint: str = Field(
        max_length=2048,
        pattern=ENDPOINT_URL,
        description="Base URL of the OpenAI-compatible server, e.g. http://vllm.serving:8000.",
    )
    model: str = Field(min_length=1, max_length=512, description="Model name sent in requests.")
    api: AuditApi = Field(
        AuditApi.COMPLETIONS, description="completions (/v1/completions) or chat."
    )
    dataset: Dataset = Field(description="Where the golden set is.")
    budgets: Annotated[list[TokenBudget], AfterValidator(_no_duplicates("ladder budget"))] = Field(
        min_length=1,
        max_length=32,
        json_schema_extra=_LIST_SET,
        description="The ladder: budgets at which EM is measured, each within "
        "[budget.min, budget.max].",
    )
    method: AuditMethod = Field(
        AuditMethod.DIRECT,
        description="direct: one request per question and budget; truncate: one request per "
        "question at the largest budget, scored on each prefix.",
    )
    sample_size: int = Field(
        100, ge=1, le=100_000, description="Questions drawn from the golden set per audit."
    )
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of the question sample.")
    concurrency: int = Field(4, ge=1, le=256, description="Requests in flight at once.")
    timeout: Annotated[Duration, Within("1s", "24h")] = Field(
        timedelta(minutes=15), description="Time limit of a whole audit."
    )
    request_timeout: Annotated[Duration, Within("1s", "1h")] = Field(
        timedelta(minutes=2), description="Time limit of one request."
    )
    answer_pattern: Annotated[str | None, AfterValidator(_check_regex)] = Field(
        None,
        max_length=1024,
        description="Regular expression whose first group is the answer; default: the last "
        "line of the output.",
    )
    defer_under_pressure: bool = Field(
        True, description="Defer scheduled audits while pressure > 1."
    )
    max_deferral: Annotated[Duration, Within("0s", "168h")] = Field(
        timedelta(hours=2), description="Longest a scheduled audit is deferred."
    )
    alerts: AlertMatch = Field(
        default_factory=AlertMatch, description="Alertmanager alerts that trigger an audit."
    )


# --------------------------------------------------------------------------- spec


class StopPolicySpec(_Model):
    """Desired state: targets, bounds and behavior for one serving Deployment."""

    rules: ClassVar[tuple[CrossFieldRule, ...]] = (
        CrossFieldRule(
            "!has(self.audit) || self.audit.budgets.all(b, b >= self.budget.min && "
            "b <= self.budget.max)",
            "every audit budget must lie within [budget.min, budget.max]: remove or change "
            "the budgets outside",
            "audit.budgets",
            lambda s: (
                "audit" not in s
                or all(s["budget"]["min"] <= b <= s["budget"]["max"] for b in s["audit"]["budgets"])
            ),
        ),
        CrossFieldRule(
            "!has(self.quality.prior) || self.quality.prior.all(p, p.budget >= self.budget.min "
            "&& p.budget <= self.budget.max)",
            "every prior budget must lie within [budget.min, budget.max]: drop the points "
            "outside or widen the bounds",
            "quality.prior",
            lambda s: all(
                s["budget"]["min"] <= p["budget"] <= s["budget"]["max"]
                for p in s["quality"].get("prior", [])
            ),
        ),
        CrossFieldRule(
            "!has(self.cost.maxTokensPerRequest) || "
            "self.cost.maxTokensPerRequest >= self.budget.min",
            "cost.maxTokensPerRequest must be at least budget.min: raise the cap or lower "
            "budget.min",
            "cost.maxTokensPerRequest",
            lambda s: (
                "maxTokensPerRequest" not in s.get("cost", {})
                or s["cost"]["maxTokensPerRequest"] >= s["budget"]["min"]
            ),
        ),
        CrossFieldRule(
            "!has(self.control) || !has(self.control.maxStepUp) || "
            "self.control.maxStepUp >= self.budget.step",
            "control.maxStepUp must be at least budget.step: a smaller move cannot land on a "
            "multiple of step",
            "control.maxStepUp",
            lambda s: (
                "maxStepUp" not in s.get("control", {})
                or s["control"]["maxStepUp"] >= s["budget"].get("step", 1)
            ),
        ),
        CrossFieldRule(
            "!has(self.control) || !has(self.control.maxStepDown) || "
            "self.control.maxStepDown >= self.budget.step",
            "control.maxStepDown must be at least budget.step: a smaller move cannot land on a "
            "multiple of step",
            "control.maxStepDown",
            lambda s: (
                "maxStepDown" not in s.get("control", {})
                or s["control"]["maxStepDown"] >= s["budget"].get("step", 1)
            ),
        ),
    )
    model_config = ConfigDict(json_schema_extra=_rules_schema(rules))

    target_ref: TargetRef = Field(description="The Deployment whose budget is controlled.")
    budget: Budget = Field(description="Budget bounds and sink.")
    quality: Quality = Field(description="EM target, floor and prior evidence.")
    cost: Cost = Field(default_factory=Cost, description="Cost cap and priority.")
    load: Load = Field(default_factory=Load, description="Load signals.")
    control: Control = Field(default_factory=Control, description="Control behavior.")
    audit: Audit | None = Field(None, description="Audit plan; without it no audit runs.")


# --------------------------------------------------------------------------- status


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class ConditionType(StrEnum):
    """The condition types the operator sets."""

    READY = "Ready"
    METRICS_AVAILABLE = "MetricsAvailable"
    AUDITED = "Audited"
    DEGRADED = "Degraded"
    TARGET_UNREACHABLE = "TargetUnreachable"
    FALLBACK = "Fallback"
    PAUSED = "Paused"
    ALERT_FIRING = "AlertFiring"


class Condition(_Model):
    """A metav1.Condition."""

    type: str = Field(max_length=316, description="Condition type, e.g. Ready.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        max_length=1024,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        description="CamelCase reason.",
    )
    message: str = Field("", max_length=32768, description="Human-readable details.")
    last_transition_time: datetime = Field(description="When status last changed.")
    observed_generation: int | None = Field(
        None, ge=0, description="Generation of the spec this condition was set for."
    )


class Recommendation(_Model):
    """What the control law recommends, whether or not it was applied (as VPA's recommendation)."""

    target: int | None = Field(None, description="Cheapest budget meeting emTarget.")
    floor: int | None = Field(None, description="Cheapest budget meeting emFloor.")
    budget: int = Field(description="Budget recommended now, after load and stability rules.")
    reason: str = Field("", max_length=1024, description="Why, in one line.")


class CurvePoint(_Model):
    """One measured point of the EM-vs-budget curve."""

    budget: int = Field(description="Budget, in tokens.")
    em: Fraction = Field(description="Exact-Match rate.")
    samples: int = Field(ge=0, description="Answers scored (formerly n).")
    lower: Fraction = Field(description="Wilson lower bound of em at quality.confidence.")
    mean_tokens: float | None = Field(None, ge=0, description="Mean tokens used per answer.")
    truncated: int = Field(
        0, ge=0, description="Answers cut by the budget with no extractable answer."
    )


class CurveSource(StrEnum):
    NONE = "none"
    PRIOR = "prior"
    AUDIT = "audit"


class AuditTrigger(StrEnum):
    SCHEDULE = "schedule"
    MANUAL = "manual"
    ALERT = "alert"
    SPEC_CHANGE = "spec-change"


class AuditResult(StrEnum):
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    DEFERRED = "Deferred"
    RUNNING = "Running"


class LastAudit(_Model):
    """The most recent audit."""

    time: datetime = Field(description="When it started.")
    trigger: AuditTrigger = Field(description="schedule, manual, alert or spec-change.")
    result: AuditResult = Field(description="Succeeded, Failed, Deferred or Running.")
    message: str = Field("", max_length=4096, description="Outcome in one line.")


class AlertStatus(StrEnum):
    FIRING = "firing"
    RESOLVED = "resolved"


class AlertRecord(_Model):
    """One Alertmanager alert seen for this policy: the webhook's dedupe record."""

    fingerprint: str = Field(max_length=128, description="Alertmanager's fingerprint.")
    starts_at: datetime = Field(description="startsAt of the alert: with the fingerprint, its key.")
    status: AlertStatus = Field(description="firing or resolved, as last received.")
    alertname: str = Field("", max_length=256, description="The alertname label.")
    last_seen: datetime = Field(description="When it was last received.")

    @property
    def key(self) -> tuple[str, datetime]:
        return (self.fingerprint, self.starts_at)


class AuditScheduleState(_Model):
    """What the audit scheduler remembers between ticks."""

    last_schedule_time: datetime | None = Field(
        None,
        description="The latest cron slot consumed by an audit start; missed slots after it "
        "collapse into one catch-up run.",
    )
    deferred_since: datetime | None = Field(
        None,
        description="When the due scheduled or spec-change audit was first deferred under "
        "pressure; it runs anyway maxDeferral later.",
    )
    spec_hash: str | None = Field(
        None,
        max_length=64,
        description="Hash of the measurement fields of spec.audit at the last audit start; "
        "a different hash is a spec-change trigger.",
    )
    pending: list[AuditTrigger] = Field(
        default_factory=list,
        max_length=4,
        json_schema_extra=_LIST_SET,
        description="Triggers requested by events (a firing alert) and not yet started.",
    )


class OriginalValue(_Model):
    """What the sink held before the operator first wrote it; restored on delete."""

    present: bool = Field(description="Whether the sink existed; if not it is removed on delete.")
    value: str | None = Field(None, max_length=8192, description="The original raw value.")


class HistoryEntry(_Model):
    """One recommendation, kept for the downscale stabilization window."""

    time: datetime
    budget: int


class StopPolicyStatus(_Model):
    """Observed state, rebuilt by the operator every interval."""

    budget: int | None = Field(None, description="Budget currently applied to the target.")
    recommendation: Recommendation | None = Field(None, description="Latest recommendation.")
    pressure: float | None = Field(None, ge=0, description="Load pressure (max value/target).")
    signals: dict[str, float] = Field(
        default_factory=dict, description="Latest value of each load signal."
    )
    observed_em: float | None = Field(
        None, alias="observedEM", ge=0, le=1, description="Latest live EM from quality.query."
    )
    truncation_ratio: float | None = Field(
        None, ge=0, le=1, description="Share of requests stopped by the budget (preset)."
    )
    curve: list[CurvePoint] = Field(
        default_factory=list,
        max_length=64,
        json_schema_extra=_list_map("budget"),
        description="EM-vs-budget curve in use.",
    )
    curve_source: CurveSource = Field(
        CurveSource.NONE, description="none, prior (quality.prior) or audit."
    )
    last_audit: LastAudit | None = Field(None, description="Most recent audit.")
    next_audit_time: datetime | None = Field(
        None, description="When the next scheduled audit is due."
    )
    last_patch_time: datetime | None = Field(None, description="When the target was last patched.")
    last_evaluation_time: datetime | None = Field(
        None, description="When the operator last evaluated the policy."
    )
    original_value: OriginalValue | None = Field(
        None, description="Sink value before the first patch."
    )
    failures: int = Field(0, ge=0, description="Metric failures in a row.")
    history: list[HistoryEntry] = Field(
        default_factory=list,
        max_length=1024,
        description="Recommendations within the downscale stabilization window.",
    )
    audit_schedule: AuditScheduleState | None = Field(
        None,
        description="Audit scheduler state: last cron slot consumed, deferral start, spec hash, "
        "pending triggers.",
    )
    alerts: list[AlertRecord] = Field(
        default_factory=list,
        max_length=32,
        json_schema_extra=_list_map("fingerprint", "startsAt"),
        description="Alertmanager alerts seen for this policy, deduplicated by fingerprint and "
        "startsAt; a firing one sets AlertFiring.",
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        json_schema_extra=_list_map("type"),
        description="Current conditions.",
    )
    observed_generation: int | None = Field(
        None, ge=0, description="Generation of the spec last acted upon."
    )


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
