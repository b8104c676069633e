"""The status of a StopPolicy, as the operator rebuilds it every interval."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import (
    Field,
)

from stopbudget.api.base import _LIST_SET, Fraction, _list_map, _Model

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
    #: Whether the law has evidence (an audited curve or quality.prior); False: it holds
    #: budget.initial and says which audit it waits for (cold start).
    EVIDENCE_READY = "EvidenceReady"
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
    audits: int | None = Field(
        None,
        ge=0,
        description="Audits of the current measurement pooled into this point (samples is "
        "their total); absent for the prior.",
    )


#: Characters of a base64 bitset of ``audit.sampleSize`` (at most 100,000) questions.
_BITSET_CHARS = 4 * -(-(100_000 // 8) // 3)


class EvidencePoint(_Model):
    """One budget of one pooled audit, with its per-question outcomes."""

    budget: int = Field(description="Budget, in tokens.")
    hits: int = Field(ge=0, description="Exact matches.")
    samples: int = Field(ge=0, description="Answers scored.")
    mean_tokens: float | None = Field(None, ge=0, description="Mean tokens used per answer.")
    truncated: int = Field(
        0, ge=0, description="Answers cut by the budget with no extractable answer."
    )
    correct: str | None = Field(
        None,
        max_length=_BITSET_CHARS,
        description="Questions answered exactly, as a base64 little-endian bitset (bit i: "
        "question i of the audit's sample); absent without per-question data.",
    )
    scored: str | None = Field(
        None,
        max_length=_BITSET_CHARS,
        description="Questions scored, as correct; absent when every question was.",
    )


class PooledAudit(_Model):
    """One audit of the current measurement, kept to pool with the next ones."""

    time: datetime = Field(description="When it started.")
    measurement: str = Field(
        max_length=64,
        description="Hash of what the audit measured: the measurement fields of spec.audit "
        "and the golden set's content; a new one starts a new pool.",
    )
    questions: int = Field(ge=0, description="Questions in the audit's sample.")
    held: bool = Field(
        False,
        description="Significantly different from the pooled audits: held out of the curve "
        "until a second audit confirms the shift.",
    )
    points: list[EvidencePoint] = Field(
        default_factory=list,
        max_length=64,
        json_schema_extra=_list_map("budget"),
        description="What each budget of the ladder scored.",
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
    #: The control law's quality guard: live EM below emFloor.
    QUALITY_GUARD = "quality-guard"
    #: Cold start: the law has no evidence (no quality.prior, no audited curve) and the
    #: policy was never audited; never deferred by load.  (A new policy's first audit is
    #: labelled spec-change, which precedes it, and is never deferred either.)
    COLD_START = "cold-start"


class AuditResult(StrEnum):
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    DEFERRED = "Deferred"
    RUNNING = "Running"


class LastAudit(_Model):
    """The most recent audit."""

    time: datetime = Field(description="When it started.")
    trigger: AuditTrigger = Field(
        description="schedule, manual, alert, spec-change, quality-guard (live EM below "
        "emFloor) or cold-start (no prior and no audit yet: never deferred by load)."
    )
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
        max_length=len(AuditTrigger),
        json_schema_extra=_LIST_SET,
        description="Triggers requested by events (a firing alert, the quality guard) and not "
        "yet started.",
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
    audit_history: list[PooledAudit] = Field(
        default_factory=list,
        max_length=16,
        description="The recent audits of the current measurement: the pooled ones make the "
        "curve; a held one waits for a second audit to confirm a shift.",
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
