"""metav1.Condition bookkeeping. PURE: ``now`` comes in.

A condition's ``lastTransitionTime`` changes only when its ``status`` changes,
as the Kubernetes API conventions require; reason and message may change
without a transition.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from stopbudget.api import Condition, ConditionStatus, ConditionType

#: The order conditions are listed in status (Ready first, as kubectl shows it).
ORDER = tuple(ConditionType)


def set_condition(
    conditions: Sequence[Condition],
    type_: ConditionType,
    status: bool | None,
    reason: str,
    message: str,
    now: datetime,
    generation: int | None = None,
) -> list[Condition]:
    """``conditions`` with ``type_`` set; ``status`` None means Unknown."""
    value = (
        ConditionStatus.UNKNOWN
        if status is None
        else ConditionStatus.TRUE
        if status
        else ConditionStatus.FALSE
    )
    old = find(conditions, type_)
    since = old.last_transition_time if old is not None and old.status == value else now
    new = Condition(
        type=type_.value,
        status=value,
        reason=reason,
        message=message[:32768],
        last_transition_time=since,
        observed_generation=generation,
    )
    others = [c for c in conditions if c.type != type_.value]
    return _ordered([*others, new])


def remove_condition(conditions: Sequence[Condition], type_: ConditionType) -> list[Condition]:
    return [c for c in conditions if c.type != type_.value]


def find(conditions: Iterable[Condition], type_: ConditionType) -> Condition | None:
    return next((c for c in conditions if c.type == type_.value), None)


def _ordered(conditions: list[Condition]) -> list[Condition]:
    rank = {t.value: i for i, t in enumerate(ORDER)}
    return sorted(conditions, key=lambda c: (rank.get(c.type, len(rank)), c.type))
