"""Alertmanager notifications, pure: validation, matching to policies, dedupe, planning.

PURE: no I/O, no event loop and no clock (every function that needs the time takes
``now``).  Alertmanager's ``webhook_config`` POSTs a JSON payload (version ``"4"``) per
alert group; the receiver (:mod:`stopbudget.clients.webhook`) authenticates and decodes
it, then this module says what it means: one :class:`PolicyAlerts` per matched
StopPolicy, which the operator's next tick applies.

* :func:`parse_payload`: bytes -> :class:`WebhookPayload`, or :class:`PayloadError`
  with the reason (malformed JSON, wrong version, missing or mistyped fields).  Each
  alert is validated on its own, with what the background computes (times in UTC):
  a bad alert is dropped and listed (:class:`RejectedAlert`), never its whole group;
* :func:`selects` / :class:`PolicyIndex`: an alert selects a policy by its
  labels ``stoppolicy`` + ``namespace`` (exact), or by the policy's
  ``audit.alerts.matchLabels`` (all listed labels equal; empty matches nothing);
  the index makes an alert cost its labels, not the number of policies;
* :func:`observe` / :func:`plan_payload`: dedupe by (fingerprint, startsAt)
  against a small serialisable record list kept in each policy's status
  (:class:`AlertRecord`, ``status.alerts``), so repeats (``repeat_interval``), HA
  twins and operator restarts trigger once.  A firing alert not seen before
  triggers an audit; ``resolved`` never triggers and clears ``AlertFiring`` when
  no firing record is left (:func:`firing`).  Records expire (:func:`expire`,
  :class:`DedupeConfig`) and their number is bounded.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

import pydantic_core
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
)
from pydantic.alias_generators import to_camel

from stopbudget.api import AlertRecord, AlertStatus, StopPolicySpec

PAYLOAD_VERSION = "4"
#: Alert labels that name the policy an alert is about (as on the operator's own series).
LABEL_POLICY = "stoppolicy"
LABEL_NAMESPACE = "namespace"
#: Problems listed in a 400 answer at most.
MAX_PROBLEMS = 10


# --------------------------------------------------------------------------- the payload


class _Wire(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )


Labels = dict[str, str]


def _text_only(value: object) -> object:
    if not isinstance(value, str):
        raise ValueError("must be an RFC 3339 timestamp string, e.g. 2024-05-01T12:00:00Z")  # noqa: TRY004 - pydantic wants ValueError
    return value


def _in_utc(value: datetime) -> datetime:
    """The time in UTC, checked now: ``0001-01-01T00:30:00+01:00`` is valid RFC 3339 but
    before year 1 in UTC, and converting it later would fail after the 202."""
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{value.isoformat()} is outside years 1-9999 in UTC") from None


#: An RFC 3339 time with a zone, as Alertmanager writes it (no epoch numbers), in UTC.
Timestamp = Annotated[AwareDatetime, BeforeValidator(_text_only), AfterValidator(_in_utc)]


class WebhookAlert(_Wire):
    """One alert of a webhook payload, validated on its own: a bad one costs only itself."""

    status: AlertStatus
    labels: Labels
    annotations: Labels = Field(default_factory=dict)
    starts_at: Timestamp
    #: Zero time (0001-01-01) while firing: Alertmanager hides a future end.
    ends_at: Timestamp | None = None
    generator_url: str = Field("", alias="generatorURL")
    fingerprint: str = Field(min_length=1, max_length=128)

    @property
    def alertname(self) -> str:
        return self.labels.get("alertname", "")


@dataclass(frozen=True)
class RejectedAlert:
    """An alert of a payload that failed validation: dropped, counted and logged; the
    others of its payload are processed."""

    #: Its position in the payload's ``alerts``.
    index: int
    #: ``firing`` or ``resolved`` when that much was readable, else ``unknown``.
    status: str
    problems: tuple[str, ...]


class WebhookPayload(_Wire):
    """The body of an Alertmanager webhook notification, payload version 4.

    ``alerts`` holds the valid alerts; :attr:`rejected` the others (see :func:`parse_payload`).
    """

    version: Literal["4"]
    group_key: str
    status: AlertStatus
    receiver: str
    group_labels: Labels = Field(default_factory=dict)
    common_labels: Labels = Field(default_factory=dict)
    common_annotations: Labels = Field(default_factory=dict)
    external_url: str = Field("", alias="externalURL")
    alerts: list[WebhookAlert]
    #: Alerts left out by the receiver's ``max_alerts``.
    truncated_alerts: int = Field(0, ge=0, strict=True)
    _rejected: tuple[RejectedAlert, ...] = PrivateAttr(default=())

    @property
    def rejected(self) -> tuple[RejectedAlert, ...]:
        """The alerts of the body that failed validation, in payload order."""
        return self._rejected


class PayloadError(ValueError):
    """A webhook body the client got wrong: ``status`` is the 4xx to answer (400 unless the
    encoding is unsupported, 415, or the decoded body too large, 413); ``problems`` say where."""

    def __init__(self, reason: str, problems: Sequence[str] = (), *, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.problems = list(problems)
        self.status = status


def _location(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(payload)"


def _problems(exc: ValidationError, prefix: tuple[int | str, ...] = ()) -> list[str]:
    return [
        f"{_location((*prefix, *err['loc']))}: {err['msg']}"
        for err in exc.errors(include_url=False)
    ]


def _status_of(raw: object) -> str:
    status = raw.get("status") if isinstance(raw, dict) else None
    return status if status in (AlertStatus.FIRING, AlertStatus.RESOLVED) else "unknown"


def parse_payload(body: bytes) -> WebhookPayload:
    """Parse and validate a webhook body; :class:`PayloadError` names what is wrong.

    Each alert is validated on its own, including what the background will compute with
    (its times must exist in UTC): an invalid alert is left out of ``alerts`` and listed
    in :attr:`WebhookPayload.rejected`, so it never costs the others of its group.  The
    payload is refused as a whole when its own fields are invalid, or when it has alerts
    and none is valid.
    """
    try:
        data: Any = pydantic_core.from_json(body)
    except ValueError as exc:
        raise PayloadError(f"malformed JSON: {exc}") from None
    if not isinstance(data, dict):
        raise PayloadError(f"the payload must be a JSON object, got {type(data).__name__}")
    version = data.get("version")
    if "version" in data and version != PAYLOAD_VERSION:
        shown = repr(version)[:40]
        raise PayloadError(
            f"unsupported payload version {shown}: this receiver reads Alertmanager's "
            f"webhook payload version {PAYLOAD_VERSION!r}"
        )
    raw_alerts = data.get("alerts")
    valid: list[WebhookAlert] = []
    rejected: list[RejectedAlert] = []
    if isinstance(raw_alerts, list):
        for index, raw in enumerate(raw_alerts):
            try:
                valid.append(WebhookAlert.model_validate(raw))
            except ValidationError as exc:
                where = ("alerts", index)
                rejected.append(RejectedAlert(index, _status_of(raw), tuple(_problems(exc, where))))
        data = {**data, "alerts": valid}  # instances: not validated again
    alert_problems = [p for r in rejected for p in r.problems]
    try:
        payload = WebhookPayload.model_validate(data)
    except ValidationError as exc:
        everything = _problems(exc) + alert_problems
        raise PayloadError(
            f"invalid payload: {len(everything)} problem(s)", everything[:MAX_PROBLEMS]
        ) from None
    if rejected and not valid:
        raise PayloadError(
            f"invalid payload: {len(alert_problems)} problem(s)", alert_problems[:MAX_PROBLEMS]
        )
    payload._rejected = tuple(rejected)
    return payload


# --------------------------------------------------------------------------- matching


@dataclass(frozen=True)
class PolicyTarget:
    """What the receiver needs to know of one StopPolicy (a snapshot from the operator)."""

    namespace: str
    name: str
    #: ``spec.audit.alerts.matchLabels``; empty selects nothing.
    match_labels: Mapping[str, str] = field(default_factory=dict)
    raise_budget_on_firing: bool = False
    #: Whether the policy has an audit section (without one no audit can be triggered).
    auditable: bool = True
    #: ``status.alerts``: the dedupe records persisted by the operator.
    alerts: tuple[AlertRecord, ...] = ()

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @classmethod
    def from_spec(
        cls,
        namespace: str,
        name: str,
        spec: StopPolicySpec,
        alerts: Iterable[AlertRecord] = (),
    ) -> PolicyTarget:
        audit = spec.audit
        return cls(
            namespace=namespace,
            name=name,
            match_labels=dict(audit.alerts.match_labels) if audit else {},
            raise_budget_on_firing=bool(audit and audit.alerts.raise_budget_on_firing),
            auditable=audit is not None,
            alerts=tuple(alerts),
        )


def selects(labels: Mapping[str, str], target: PolicyTarget) -> bool:
    """Whether an alert with ``labels`` is about the policy ``target``."""
    if labels.get(LABEL_POLICY) == target.name and labels.get(LABEL_NAMESPACE) == target.namespace:
        return True
    return bool(target.match_labels) and all(
        labels.get(k) == v for k, v in target.match_labels.items()
    )


def match_policies(
    labels: Mapping[str, str], targets: Iterable[PolicyTarget]
) -> list[PolicyTarget]:
    """The policies an alert with ``labels`` selects, in the order of ``targets``."""
    return PolicyIndex(targets).match(labels)


class PolicyIndex:
    """The policies indexed by what selects them, so that matching an alert costs its own
    labels and the policies that share one of them, not every policy (a payload of
    thousands of alerts against a thousand policies was seconds of CPU).

    A policy is found by (namespace, name), and by one of its ``matchLabels`` pairs: the
    pair fewest policies share.  Candidates are then checked with :func:`selects`.
    """

    def __init__(self, targets: Iterable[PolicyTarget]) -> None:
        self.targets = list(targets)
        self._by_name: dict[tuple[str, str], list[int]] = {}
        self._by_pair: dict[tuple[str, str], list[int]] = {}
        shared: dict[tuple[str, str], int] = {}
        for target in self.targets:
            for pair in target.match_labels.items():
                shared[pair] = shared.get(pair, 0) + 1
        for i, target in enumerate(self.targets):
            self._by_name.setdefault(target.key, []).append(i)
            if target.match_labels:
                rarest = min(target.match_labels.items(), key=lambda pair: (shared[pair], pair))
                self._by_pair.setdefault(rarest, []).append(i)

    def match(self, labels: Mapping[str, str]) -> list[PolicyTarget]:
        """The policies an alert with ``labels`` selects, in the order of the targets."""
        found: set[int] = set()
        name, namespace = labels.get(LABEL_POLICY), labels.get(LABEL_NAMESPACE)
        if name is not None and namespace is not None:
            found.update(self._by_name.get((namespace, name), ()))
        if self._by_pair:
            if len(labels) <= len(self._by_pair):
                for pair in labels.items():
                    found.update(self._by_pair.get(pair, ()))
            else:  # an alert with more labels than there are indexed pairs
                for pair, indexes in self._by_pair.items():
                    if labels.get(pair[0]) == pair[1]:
                        found.update(indexes)
        return [self.targets[i] for i in sorted(found) if selects(labels, self.targets[i])]


# --------------------------------------------------------------------------- dedupe


@dataclass(frozen=True)
class DedupeConfig:
    """Expiry and size of the dedupe records kept per policy.

    ``firing_ttl`` must exceed Alertmanager's ``repeat_interval`` (default 4h):
    every repeat refreshes ``lastSeen``, and a record that expires while its
    alert still fires triggers a new audit on the next repeat.
    ``resolved_ttl`` keeps resolved records to absorb a late firing copy from
    the other member of an HA pair.
    """

    firing_ttl: timedelta = timedelta(hours=48)
    resolved_ttl: timedelta = timedelta(hours=6)
    max_records: int = 32


DEFAULT_DEDUPE = DedupeConfig()


class Outcome(StrEnum):
    """What became of one alert for one policy (label ``outcome`` of the alerts counter)."""

    #: A firing alert not seen before: an audit is requested.
    TRIGGERED = "triggered"
    #: A firing alert not seen before, for a policy without an audit section.
    NO_AUDIT = "no_audit"
    #: Same fingerprint and startsAt as a record: a repeat or an HA twin; nothing triggered.
    DUPLICATE = "duplicate"
    #: Resolved: the record is marked resolved; nothing triggered.
    RESOLVED = "resolved"
    #: No policy selected by the alert's labels.
    UNMATCHED = "unmatched"
    #: The operator's callback failed; nothing was recorded, a repeat will try again.
    ERROR = "error"
    #: The alert failed validation (e.g. a startsAt outside years 1-9999 in UTC): dropped
    #: before the 202, which lists it; the others of its payload are processed.
    INVALID = "invalid"


def _as_utc(value: datetime) -> datetime:
    if value.tzinfo is UTC:  # the common case, and called for every record of every alert
        return value
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _expired(record: AlertRecord, now: datetime, config: DedupeConfig) -> bool:
    ttl = config.firing_ttl if record.status is AlertStatus.FIRING else config.resolved_ttl
    return _as_utc(record.last_seen) + ttl <= now


def expire(
    records: Iterable[AlertRecord], now: datetime, config: DedupeConfig = DEFAULT_DEDUPE
) -> tuple[AlertRecord, ...]:
    """``records`` without the expired ones, at most ``max_records`` (oldest resolved go first)."""
    now = _as_utc(now)
    kept = [r for r in records if not _expired(r, now, config)]
    if len(kept) > config.max_records:
        kept.sort(key=lambda r: (r.status is AlertStatus.FIRING, _as_utc(r.last_seen)))
        kept = kept[len(kept) - config.max_records :]
    return tuple(sorted(kept, key=lambda r: (_as_utc(r.starts_at), r.fingerprint)))


def firing(
    records: Iterable[AlertRecord], now: datetime, config: DedupeConfig = DEFAULT_DEDUPE
) -> bool:
    """Whether an unexpired firing record is left: the ``AlertFiring`` condition."""
    return any(r.status is AlertStatus.FIRING for r in expire(records, now, config))


def observe(
    records: Iterable[AlertRecord],
    alert: WebhookAlert,
    now: datetime,
    config: DedupeConfig = DEFAULT_DEDUPE,
) -> tuple[tuple[AlertRecord, ...], Outcome]:
    """Fold one received alert into a policy's records: the new records and what happened.

    The key is (fingerprint, startsAt).  A firing alert with a new key is
    :attr:`Outcome.TRIGGERED`; a known key is :attr:`Outcome.DUPLICATE`
    whatever its status (a late firing copy after the resolve stays resolved).
    Resolved marks the record resolved (creating it if unknown, to absorb a
    late firing copy).  One label set (fingerprint) cannot fire twice at once:
    an alert resolves the older firing records of its fingerprint, and a firing
    alert older than a record of its fingerprint is a late copy (duplicate).
    """
    now = _as_utc(now)
    return _fold(expire(records, now, config), alert, now, config)


def _order(record: AlertRecord) -> tuple[datetime, str]:
    return (_as_utc(record.starts_at), record.fingerprint)


def _eviction(record: AlertRecord) -> tuple[bool, datetime]:
    return (record.status is AlertStatus.FIRING, _as_utc(record.last_seen))


def _fold(
    current: Sequence[AlertRecord], alert: WebhookAlert, now: datetime, config: DedupeConfig
) -> tuple[tuple[AlertRecord, ...], Outcome]:
    """:func:`observe` on ``current`` as :func:`expire` returned it at ``now`` (in UTC).

    A payload folds its alerts one after another: one pass over the records per alert,
    instead of expiring and sorting them twice (``tests/unit/core/audits/test_alerts.py`` checks it
    against the plain definition: expire, fold, append, expire).
    """
    starts_at = _as_utc(alert.starts_at)
    kept: list[AlertRecord] = []
    known: AlertRecord | None = None
    newer = False
    for record in current:
        if record.fingerprint == alert.fingerprint:
            started = _as_utc(record.starts_at)
            if started == starts_at:
                known = record
                continue
            if started > starts_at:
                newer = True
            elif record.status is AlertStatus.FIRING:
                # One label set cannot fire twice at once: the older instance is over.
                record = record.model_copy(update={"status": AlertStatus.RESOLVED})  # noqa: PLW2901
                if _expired(record, now, config):  # now under the resolved TTL
                    continue
        kept.append(record)

    if alert.status is AlertStatus.FIRING:
        # Known, or older than an instance already seen (a late copy): nothing to trigger.
        outcome = Outcome.DUPLICATE if known or newer else Outcome.TRIGGERED
        status = known.status if known else (AlertStatus.RESOLVED if newer else AlertStatus.FIRING)
    else:
        outcome = (
            Outcome.DUPLICATE
            if known and known.status is AlertStatus.RESOLVED
            else Outcome.RESOLVED
        )
        status = AlertStatus.RESOLVED
    new = AlertRecord(
        fingerprint=alert.fingerprint,
        starts_at=starts_at,
        status=status,
        alertname=alert.alertname[:256],
        last_seen=now,
    )
    if _expired(new, now, config):  # only with a TTL of zero
        return tuple(kept), outcome
    # ``current`` held at most max_records, so at most one goes: the oldest resolved one
    # (the first of equals in list order, the new record last, as a stable sort would).
    if len(kept) >= config.max_records:
        oldest = min(range(len(kept)), key=lambda i: _eviction(kept[i]))
        if _eviction(new) < _eviction(kept[oldest]):
            return tuple(kept), outcome
        del kept[oldest]
    bisect.insort(kept, new, key=_order)
    return tuple(kept), outcome


@dataclass(frozen=True)
class PolicyAlerts:
    """What one payload means for one policy: what the operator's callback applies."""

    namespace: str
    name: str
    #: The new ``status.alerts`` to write.
    alerts: tuple[AlertRecord, ...]
    #: Each alert of the payload selecting this policy, with its outcome.
    outcomes: tuple[tuple[WebhookAlert, Outcome], ...]
    #: Request an audit with trigger ``alert`` (a new firing alert and an audit section).
    trigger_audit: bool
    #: Raise the budget to the EM-target budget at once (``raiseBudgetOnFiring``).
    raise_budget: bool
    #: The ``AlertFiring`` condition: True while an unexpired firing record is left.
    alert_firing: bool
    #: One line for an Event or the log.
    reason: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


@dataclass(frozen=True)
class Plan:
    """What one payload means: per matched policy, and the alerts no policy selected."""

    policies: tuple[PolicyAlerts, ...]
    unmatched: tuple[WebhookAlert, ...]
    #: Alerts by (status, outcome), as the alerts counter counts them: once per selected
    #: policy, unmatched and invalid ones once.
    counts: Mapping[tuple[str, str], int] = field(default_factory=dict)


#: Alert names an Event's message lists at most (a payload may hold thousands).
MAX_NAMES = 5


def _summary(outcomes: Sequence[tuple[WebhookAlert, Outcome]], trigger: bool) -> str:
    def names(wanted: Outcome) -> str:
        found = sorted({a.alertname or a.fingerprint for a, o in outcomes if o is wanted})
        shown = ", ".join(name[:80] for name in found[:MAX_NAMES])
        return shown + (f" and {len(found) - MAX_NAMES} more" if len(found) > MAX_NAMES else "")

    parts = []
    if trigger:
        parts.append(f"alert firing ({names(Outcome.TRIGGERED)}): audit requested")
    if no_audit := names(Outcome.NO_AUDIT):
        parts.append(f"alert firing ({no_audit}) but the policy has no audit section")
    if resolved := names(Outcome.RESOLVED):
        parts.append(f"alert resolved ({resolved})")
    if dups := [a for a, o in outcomes if o is Outcome.DUPLICATE]:
        parts.append(f"{len(dups)} repeat(s) ignored")
    return "; ".join(parts)


def plan_payload(
    payload: WebhookPayload,
    targets: Iterable[PolicyTarget],
    now: datetime,
    *,
    known: Mapping[tuple[str, str], Sequence[AlertRecord]] | None = None,
    config: DedupeConfig = DEFAULT_DEDUPE,
) -> Plan:
    """Match every alert of ``payload`` and fold it into each selected policy's records.

    ``known`` overrides ``target.alerts`` (the receiver's in-memory copy, newer
    than the operator's snapshot of status).  Alerts are folded in payload order.
    """
    index = PolicyIndex(targets)
    known = known or {}
    now = _as_utc(now)
    records: dict[tuple[str, str], tuple[AlertRecord, ...]] = {}
    outcomes: dict[tuple[str, str], list[tuple[WebhookAlert, Outcome]]] = {}
    by_key: dict[tuple[str, str], PolicyTarget] = {}
    unmatched: list[WebhookAlert] = []
    for alert in payload.alerts:
        selected = index.match(alert.labels)
        if not selected:
            unmatched.append(alert)
        for target in selected:
            k = target.key
            by_key[k] = target
            current = records.get(k)
            if current is None:
                current = expire(known.get(k, target.alerts), now, config)
            records[k], outcome = _fold(current, alert, now, config)
            if outcome is Outcome.TRIGGERED and not target.auditable:
                outcome = Outcome.NO_AUDIT
            outcomes.setdefault(k, []).append((alert, outcome))
    result = []
    for k, target in by_key.items():
        trigger = any(o is Outcome.TRIGGERED for _, o in outcomes[k])
        result.append(
            PolicyAlerts(
                namespace=target.namespace,
                name=target.name,
                alerts=records[k],
                outcomes=tuple(outcomes[k]),
                trigger_audit=trigger,
                raise_budget=trigger and target.raise_budget_on_firing,
                alert_firing=firing(records[k], now, config),
                reason=_summary(outcomes[k], trigger),
            )
        )
    counts: Counter[tuple[str, str]] = Counter()
    for rejected in payload.rejected:
        counts[rejected.status, Outcome.INVALID.value] += 1
    for alert in unmatched:
        counts[alert.status.value, Outcome.UNMATCHED.value] += 1
    for update in result:
        for alert, outcome in update.outcomes:
            counts[alert.status.value, outcome.value] += 1
    return Plan(tuple(result), tuple(unmatched), counts)
