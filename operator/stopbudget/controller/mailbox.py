"""What this process knows of one policy between its ticks: its mailbox.

The Alertmanager webhook and a finished audit drop what they learn into the
policy's :class:`PolicyMailbox` and wake the policy's loop; the next tick takes
it out and writes it.  The tick is the only writer of status, so nothing an
alert or an audit brings can be overwritten by a tick in flight.  The mailbox is
lost on restart, by design: everything that matters is in the status.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from stopbudget import api
from stopbudget.clients import audit_runner
from stopbudget.core.audits import alerts


@dataclass(frozen=True)
class AuditReport:
    """A finished audit, waiting for the policy's next tick to write it."""

    trigger: api.AuditTrigger
    started: datetime
    spec: api.StopPolicySpec
    outcome: audit_runner.AuditOutcome | None
    error: str | None = None
    #: What the audit measured (:func:`stopbudget.core.pooling.measurement_of`).
    measurement: str = ""
    #: Questions in its sample (the width of the per-question bitsets).
    questions: int = 0

    @property
    def ok(self) -> bool:
        return self.outcome is not None and self.outcome.ok

    @property
    def message(self) -> str:
        if self.error is not None:
            return self.error
        assert self.outcome is not None
        return self.outcome.message


@dataclass
class PolicyMailbox:
    """One policy's mailbox: wake-ups, alert updates and the running audit, plus the
    status as last stored and the policy as the webhook matches it."""

    namespace: str
    name: str
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    #: The status as the API server stored it after this process's last write; newer
    #: than the watched object's.
    status: dict[str, Any] | None = None
    audit_task: asyncio.Task[AuditReport] | None = None
    alert_updates: list[alerts.PolicyAlerts] = field(default_factory=list)
    #: The policy as the Alertmanager webhook sees it (refreshed every tick).
    target: alerts.PolicyTarget | None = None
    #: This process has met the policy (its loop started): see Operator.webhook_ready.
    met: bool = False
    #: The value of the audit-request annotation this process removed when its audit
    #: started: until a tick sees the annotation gone, that value is not a new request
    #: (the watched object can lag behind our own removal by a tick).
    consumed_request: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return self.namespace, self.name

    @property
    def auditing(self) -> bool:
        return self.audit_task is not None and not self.audit_task.done()

    def requests_in(self, annotations: Mapping[str, str]) -> Mapping[str, str]:
        """``annotations`` without an audit request this process has already consumed."""
        value = annotations.get(api.ANNOTATION_AUDIT_REQUESTED)
        if value is None:
            self.consumed_request = None
            return annotations
        if value == self.consumed_request:
            return {k: v for k, v in annotations.items() if k != api.ANNOTATION_AUDIT_REQUESTED}
        return annotations

    def finished_audit(self) -> AuditReport | None:
        """The report of an audit that finished since the last tick (taken out), if any."""
        task = self.audit_task
        if task is None or not task.done():
            return None
        self.audit_task = None
        if task.cancelled():
            raise RuntimeError("a cancelled audit task has no report")  # pragma: no cover
        exc = task.exception()
        if exc is not None:  # run_audit catches what it expects: this is a bug, not a failure
            raise exc
        return task.result()

    def take_alert_updates(self) -> list[alerts.PolicyAlerts]:
        updates, self.alert_updates = self.alert_updates, []
        return updates

    async def sleep(
        self, seconds: float, stopping: Callable[[], Awaitable[object]] | None = None
    ) -> None:
        """Wait ``seconds``, or until woken (spec change, alert, finished audit) or stopping."""
        waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(self.wake.wait())]
        if stopping is not None:
            waits.append(asyncio.ensure_future(stopping()))
        try:
            await asyncio.wait(waits, timeout=max(0.0, seconds), return_when="FIRST_COMPLETED")
        finally:
            for waiting in waits:
                waiting.cancel()
            self.wake.clear()

    async def stop_audit(self) -> None:
        task, self.audit_task = self.audit_task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
