"""The spec of a StopPolicy: target, budget and sink, quality, cost, load, control, audit."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import timedelta
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from croniter import croniter
from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    model_validator,
)

from stopbudget.api.base import (
    _LIST_SET,
    ANNOTATION_KEY,
    CONFIGMAP_KEY,
    CRON_SHAPE,
    DNS_LABEL,
    DNS_SUBDOMAIN,
    ENDPOINT_URL,
    ENV_NAME,
    LABEL_NAME,
    NOT_BLANK,
    SIGNAL_NAME,
    CrossFieldRule,
    Fraction,
    TokenBudget,
    _list_map,
    _Model,
    _no_duplicates,
    _rules_schema,
)
from stopbudget.api.durations import Duration, Within

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
    AI_GATEWAY = "aiGateway"


#: Sinks whose change rolls the pods (pod template); the others are read live.
RESTARTING_SINKS = frozenset({SinkType.ENV, SinkType.ARG})

BUDGET_PLACEHOLDER = "{budget}"

#: A top-level field of a JSON request body (Envoy AI Gateway's bodyMutation sets only those).
BODY_FIELD = r"^[A-Za-z_][A-Za-z0-9_]*$"
#: Request fields that limit the output, and the engines' top-level thinking-budget fields
#: (vLLM, llama.cpp; SGLang's is nested in custom_params): an aiGateway sink of one budget
#: kind must not name a field of the other.
OUTPUT_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens", "n_predict")
THINKING_FIELDS = ("thinking_token_budget", "thinking_budget_tokens")


def _cel_list(names: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{n}'" for n in names) + "]"


def _kind_fits_field(budget: Mapping[str, Any]) -> bool:
    sink = budget["sink"]
    if sink["type"] != "aiGateway":
        return True
    wrong = THINKING_FIELDS if budget.get("kind", "output") == "output" else OUTPUT_FIELDS
    return sink["name"] not in wrong


def _renders_json(sink: Mapping[str, Any]) -> bool:
    """Whether an aiGateway sink's format renders a JSON value (Envoy parses it as JSON)."""
    if sink.get("type") != "aiGateway":
        return True
    try:
        json.loads(str(sink.get("format") or BUDGET_PLACEHOLDER).replace(BUDGET_PLACEHOLDER, "1"))
    except ValueError:
        return False
    return True


class Sink(_Model):
    """How the budget reaches the server: env var, container arg, annotation, ConfigMap key, or
    a field an Envoy AI Gateway AIServiceBackend sets in every request body."""

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
            "self.type != 'aiGateway' || has(self.aiServiceBackendName)",
            "aiServiceBackendName is required when type is aiGateway: name the AIServiceBackend "
            "whose bodyMutation.set receives the field",
            "aiServiceBackendName",
            lambda s: s["type"] != "aiGateway" or "aiServiceBackendName" in s,
        ),
        CrossFieldRule(
            "self.type == 'aiGateway' || !has(self.aiServiceBackendName)",
            "aiServiceBackendName is only used when type is aiGateway: remove it or set "
            "type: aiGateway",
            "aiServiceBackendName",
            lambda s: s["type"] == "aiGateway" or "aiServiceBackendName" not in s,
        ),
        CrossFieldRule(
            "self.type != 'aiGateway' || self.name.matches(r'" + BODY_FIELD + "')",
            "name of an aiGateway sink is a top-level field of the request body, e.g. "
            "max_tokens (Envoy AI Gateway sets top-level fields only)",
            "name",
            lambda s: s["type"] != "aiGateway" or re.match(BODY_FIELD, s["name"]) is not None,
        ),
        CrossFieldRule(
            "self.type == 'configMap' || !has(self.refreshPods) || !self.refreshPods",
            "refreshPods is only used with type configMap (it makes kubelet re-read the mounted "
            "ConfigMap at once): remove it or set type: configMap",
            "refreshPods",
            lambda s: s["type"] == "configMap" or not s.get("refreshPods", False),
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
            "configMap: a key of a ConfigMap read by a gateway or proxy, e.g. the budget file "
            "<class>.output of stopbudget gate (no restart); aiGateway: a field that an Envoy "
            "AI Gateway AIServiceBackend sets in every request body (spec.bodyMutation.set; it "
            "overwrites the client's value rather than capping it; no restart). "
            "env and arg change the pod template and roll the pods."
        )
    )
    name: str = Field(
        min_length=1,
        max_length=253,
        description=(
            "env: the variable name; arg: the flag, e.g. --override-generation-config (both "
            "'--flag=value' and '--flag value' forms are found); annotation: the annotation "
            "key; configMap: the key in the ConfigMap, e.g. default.output for stopbudget gate; "
            "aiGateway: the top-level request body field, e.g. max_tokens (output) or the "
            "engine's thinking field, e.g. thinking_token_budget for vLLM."
        ),
    )
    config_map_name: str | None = Field(
        None,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description="Name of the ConfigMap for type configMap (same namespace).",
    )
    ai_service_backend_name: str | None = Field(
        None,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description="Name of the AIServiceBackend (aigateway.envoyproxy.io, same namespace) for "
        "type aiGateway.",
    )
    refresh_pods: bool = Field(
        False,
        description="configMap only: after each write (and the restore on delete), annotate "
        "the target Deployment's pods (those its selector matches; stopbudget.io/budget-revision"
        ": the ConfigMap's resourceVersion) so that kubelet refreshes the mounted ConfigMap at "
        "once instead of within its sync period (about a minute). Needs the chart value "
        "rbac.refreshPods (list and patch pods); a failure is a Warning Event, the write stands.",
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

    @model_validator(mode="after")
    def _check_json_format(self) -> Sink:
        if not _renders_json(self.to_json()):
            raise ValueError(
                f"format {self.format!r} of an aiGateway sink does not render a JSON value "
                "(Envoy AI Gateway parses bodyMutation values as JSON): leave format out, "
                "or write JSON such as '{\"max_new_tokens\": {budget}}'"
            )
        return self

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
        CrossFieldRule(
            "self.sink.type != 'aiGateway' || (self.kind == 'output' ? !(self.sink.name in "
            + _cel_list(THINKING_FIELDS)
            + ") : !(self.sink.name in "
            + _cel_list(OUTPUT_FIELDS)
            + "))",
            "the aiGateway sink's name must be a field of the budget's kind: with kind output "
            "an output limit (max_tokens, max_completion_tokens, max_output_tokens), with kind "
            "thinking the engine's thinking field (vLLM thinking_token_budget, llama.cpp "
            "thinking_budget_tokens)",
            "sink.name",
            _kind_fits_field,
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


class LoadModel(StrEnum):
    """How the law's load step chooses the budget (DESIGN section 4, step 3)."""

    REACTIVE = "reactive"
    QUEUEING = "queueing"


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
    model: LoadModel = Field(
        LoadModel.REACTIVE,
        description="Load step: reactive scales the budget by the signals' pressure (r / p); "
        "queueing predicts the pressure each ladder budget would cause (arrival rate x the "
        "audits' tokens per request, against the throughput that puts the signals at target) "
        "and takes the highest that stays at or under 1; without those inputs it uses the "
        "reactive rule and says why (the vllm and tgi presets give an arrival rate; sglang, "
        "llamacpp and none do not). Not the default: on the simulator's bursty trace it kept "
        "the latency SLO less often than reactive.",
    )


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
