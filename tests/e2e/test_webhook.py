"""clients/webhook.py with a real Alertmanager posting to it with a bearer token from a file
(the server's own tests: tests/unit/clients/test_webhook.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from stopbudget.clients.webhook import (
    DEFAULT_PATH,
)
from stopbudget.core.audits.alerts import (
    Outcome,
)
from tests.unit.clients.test_webhook import TOKEN, serve


@pytest.mark.servers
async def test_real_alertmanager_posts_to_the_webhook(
    tmp_path: Path, start_alertmanager: Callable[..., Any]
) -> None:
    """Real Alertmanager -> webhook with the bearer token from a credentials_file ->
    one audit trigger; then the resolve -> AlertFiring cleared, nothing triggered."""
    async with serve(tmp_path) as hook:
        url = f"http://127.0.0.1:{hook.client.port}{DEFAULT_PATH}"
        am = await asyncio.to_thread(start_alertmanager, webhook_url=url, webhook_token=TOKEN)
        labels = {
            "alertname": "StopBudgetEMLow",
            "stoppolicy": "llama",
            "namespace": "serving",
            "severity": "page",
        }
        starts = datetime.now(UTC) - timedelta(seconds=5)
        alert = {"labels": labels, "startsAt": starts.isoformat(), "annotations": {"summary": "EM"}}
        await asyncio.to_thread(am.post_alerts, [alert])
        recorder = hook.recorder
        await recorder.wait_for(lambda: recorder.triggers == 1, within=30)
        (update,) = recorder.updates
        (record,) = update.alerts
        assert update.key == ("serving", "llama")
        assert update.alert_firing
        assert record.alertname == "StopBudgetEMLow"
        assert len(record.fingerprint) == 16
        assert abs(record.starts_at - starts) < timedelta(milliseconds=1)

        ended = {**alert, "endsAt": datetime.now(UTC).isoformat()}
        await asyncio.to_thread(am.post_alerts, [ended])
        await recorder.wait_for(lambda: not recorder.updates[-1].alert_firing, within=30)
        assert recorder.triggers == 1
        assert recorder.updates[-1].outcomes[0][1] is Outcome.RESOLVED
        assert hook.requests(202) == len(recorder.updates)
        assert hook.requests(401) == 0
