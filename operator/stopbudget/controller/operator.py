"""The operator process: its settings, clients and metrics, and the mailboxes of its policies.

One :class:`Operator` is built at start-up and shared by every policy's loop.  It
also knows when the Alertmanager webhook may accept alerts (:meth:`webhook_ready`)
and closes in order at shutdown (:meth:`close`): no tick starts, the ticks in
flight finish, the audits stop, then the clients close.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from stopbudget.clients.kube import Kube
from stopbudget.clients.metrics import OperatorMetrics
from stopbudget.clients.prometheus import PrometheusReader
from stopbudget.clients.settings import Settings
from stopbudget.controller.mailbox import PolicyMailbox
from stopbudget.core.audits import alerts

#: Seconds a stopping operator waits for the ticks in flight before closing its clients.
CLOSE_WAIT = 10.0


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Operator:
    """What one operator process shares between its policies."""

    settings: Settings
    kube: Kube
    reader: PrometheusReader
    metrics: OperatorMetrics
    clock: Callable[[], datetime] = utc_now
    mailboxes: dict[tuple[str, str], PolicyMailbox] = field(default_factory=dict)
    audit_slots: asyncio.Semaphore | None = None
    #: The policies listed at start-up (None: not listed): until each is met, the webhook
    #: answers 503 rather than accept an alert it could match to no policy and lose.
    expected: set[tuple[str, str]] | None = None
    #: Loop time after which the webhook accepts alerts anyway (a policy deleted before
    #: its loop started, or a failed listing, must not close it for ever).
    settle_deadline: float = 0.0
    #: Set by the operator's cleanup: no tick starts any more (the clients are closing).
    closing: bool = False
    _in_flight: int = 0
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    def mailbox(self, namespace: str, name: str) -> PolicyMailbox:
        key = (namespace, name)
        if key not in self.mailboxes:
            self.mailboxes[key] = PolicyMailbox(namespace, name)
        return self.mailboxes[key]

    @contextlib.asynccontextmanager
    async def ticking(self) -> AsyncIterator[bool]:
        """Around one tick and its writes: yields False once the operator is closing, so
        that no tick uses a client that :meth:`close` is shutting down."""
        if self.closing:
            yield False
            return
        self._in_flight += 1
        self._idle.clear()
        try:
            yield True
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def close(self) -> None:
        """Stop starting ticks, let the ones in flight finish (up to CLOSE_WAIT seconds),
        stop the audits, then close the clients."""
        self.closing = True
        if self._in_flight:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_WAIT):
                    await self._idle.wait()
        for key in list(self.mailboxes):
            await self.mailboxes.pop(key).stop_audit()
        await self.kube.close()
        self.reader.close()

    def webhook_ready(self) -> bool:
        """Whether every policy listed at start-up has been met (or the wait is over)."""
        if asyncio.get_running_loop().time() >= self.settle_deadline:
            return True
        if self.expected is None:
            return False
        return all(key in self.mailboxes and self.mailboxes[key].met for key in self.expected)

    async def forget(self, namespace: str, name: str) -> None:
        """A policy is gone: stop its audit, drop its series and its mailbox."""
        if self.expected is not None:
            self.expected.discard((namespace, name))
        mailbox = self.mailboxes.pop((namespace, name), None)
        if mailbox is not None:
            await mailbox.stop_audit()
        self.metrics.forget(namespace, name)

    def targets(self) -> list[alerts.PolicyTarget]:
        """The policies as the Alertmanager webhook matches them."""
        return [m.target for m in self.mailboxes.values() if m.target is not None]

    async def on_alerts(self, update: alerts.PolicyAlerts) -> None:
        """The webhook's callback: hand the update to the policy's next tick, now."""
        mailbox = self.mailboxes.get(update.key)
        if mailbox is None:  # deleted meanwhile
            return
        mailbox.alert_updates.append(update)
        mailbox.wake.set()
