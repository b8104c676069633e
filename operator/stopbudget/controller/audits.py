"""Audits through the operator: the background task that runs one, and its report as status.

A tick that the scheduler tells to start an audit calls :func:`start`; the task
reads the golden set from its ConfigMap, runs the audit with
:mod:`stopbudget.clients.audit_runner` and wakes the policy's loop, whose next
tick takes the report out of the mailbox and turns it into status with
:func:`report_as_status`.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import datetime

from stopbudget import api
from stopbudget.clients import audit_runner
from stopbudget.clients.kube import KubeError
from stopbudget.controller.mailbox import AuditReport, PolicyMailbox
from stopbudget.controller.operator import Operator
from stopbudget.core import pooling
from stopbudget.core.audits import dataset, schedule
from stopbudget.core.curve import Curve
from stopbudget.core.status import Event


def start(
    operator: Operator,
    mailbox: PolicyMailbox,
    spec: api.StopPolicySpec,
    trigger: api.AuditTrigger,
    now: datetime,
) -> None:
    """Start one audit in the background; its report lands in the mailbox."""
    mailbox.audit_task = asyncio.create_task(
        run(operator, mailbox, spec, trigger, now),
        name=f"audit {mailbox.namespace}/{mailbox.name}",
    )


async def run(
    operator: Operator,
    mailbox: PolicyMailbox,
    spec: api.StopPolicySpec,
    trigger: api.AuditTrigger,
    started: datetime,
) -> AuditReport:
    """The background task of one audit: the golden set from its ConfigMap, then the runner."""
    audit = spec.audit
    assert audit is not None
    try:
        slots = operator.audit_slots
        async with slots if slots is not None else contextlib.nullcontext():
            ref = audit.dataset
            try:
                text = await operator.kube.get_config_map_key(
                    mailbox.namespace, ref.config_map_ref.name, ref.key
                )
                measurement = pooling.measurement_of(schedule.audit_spec_hash(audit), text)
                questions = dataset.sample(
                    dataset.parse_golden(text), audit.sample_size, audit.seed
                )
            except (KubeError, dataset.DatasetError) as exc:
                message = f"golden set {ref.config_map_ref.name}/{ref.key}: {exc}"
                return AuditReport(trigger, started, spec, None, message)
            plan = audit_runner.plan_from_spec(audit, spec.quality, questions)
            outcome = await audit_runner.run_audit(plan)
            return AuditReport(
                trigger, started, spec, outcome, measurement=measurement, questions=len(questions)
            )
    finally:
        mailbox.wake.set()


@dataclass(frozen=True)
class AuditAsStatus:
    """A finished audit as the status shows it."""

    last: api.LastAudit
    #: The measured curve; None when the audit failed (the previous curve stays).
    measured: Curve | None
    event: Event
    #: The audit as the pool admits it; None when it failed.
    run: pooling.Run | None = None


def report_as_status(report: AuditReport) -> AuditAsStatus:
    """``lastAudit``, the measured curve and the Event of a finished audit."""
    result = api.AuditResult.SUCCEEDED if report.ok else api.AuditResult.FAILED
    outcome = report.outcome
    measured: Curve | None = None
    if report.ok and outcome is not None:
        measured = Curve.of(outcome.points(), report.spec.quality.confidence, api.CurveSource.AUDIT)
        summary = ", ".join(
            f"{p.budget}: {p.em:.2f} ({p.samples} samples)" for p in measured.points
        )
        message = f"{report.trigger.value} audit: EM by budget {summary}"
        if outcome.messages:
            message += f"; {outcome.message}"
    else:
        message = f"{report.trigger.value} audit failed: {report.message}"
    last = api.LastAudit(
        time=report.started, trigger=report.trigger, result=result, message=message[:4096]
    )
    event = Event("Normal" if report.ok else "Warning", f"Audit{result.value}", message)
    run = None
    if measured is not None:
        run = pooling.Run(report.started, report.measurement, report.questions, measured.points)
    return AuditAsStatus(last, measured, event, run)


def with_pool_note(
    last: api.LastAudit, history: tuple[pooling.Run, ...], outcome: pooling.Outcome
) -> api.LastAudit:
    """``lastAudit`` with what the pool did with the audit."""
    pooled = sum(1 for r in history if not r.held)
    notes = {
        pooling.Outcome.NEW: "a new measurement: the curve starts from this audit",
        pooling.Outcome.POOLED: f"the curve pools the last {pooled} audit(s)",
        pooling.Outcome.HELD: (
            f"held out of the curve: significantly different from the {pooled} pooled "
            "audit(s); a second audit like it confirms a shift"
        ),
        pooling.Outcome.SHIFT: "confirms the held audit: the curve restarts from these two",
    }
    message = f"{last.message}; {notes[outcome]}"
    return last.model_copy(update={"message": message[:4096]})
