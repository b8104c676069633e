"""The kopf layer: THIN.  Each handler parses what kopf hands it, calls one function.

* startup/cleanup: the :class:`~stopbudget.controller.operator.Operator` (settings,
  clients, metrics), the HTTP servers (metrics and health, the Alertmanager webhook);
* a loop per StopPolicy (a kopf daemon): :func:`stopbudget.controller.tick.tick` every
  ``spec.control.interval`` (sooner when woken by a spec change, an alert or a finished
  audit), then the Events it returns;
* spec or annotation changes wake that loop;
* delete: :func:`stopbudget.controller.restore.restore` puts the sink back (kopf holds
  the finalizer until it returns).

Run it with ``stopbudget run`` (or ``kopf run -m stopbudget.controller.handlers``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf
from aiohttp import web

from stopbudget import api
from stopbudget.clients import endpoints, webhook
from stopbudget.clients.kube import Kube, KubeError
from stopbudget.clients.metrics import OperatorMetrics
from stopbudget.clients.prometheus import PrometheusReader
from stopbudget.clients.settings import Settings, from_env
from stopbudget.controller import tick
from stopbudget.controller.operator import Operator
from stopbudget.controller.restore import restore

log = logging.getLogger(__name__)

RESOURCE = (api.GROUP, api.VERSION, api.PLURAL)
FINALIZER = f"{api.GROUP}/finalizer"
READINESS = endpoints.Readiness()
#: Seconds the loop runs on after kopf closes its sessions, for TLS connections to close.
TLS_CLOSE_GRACE = 0.25
#: Longest the webhook answers 503 after a start while it has not met every StopPolicy.
WEBHOOK_SETTLE_SECONDS = 60.0
#: kopf's memo key of the settings `stopbudget run` built (absent under `kopf run`).
SETTINGS = "settings"


def run(config: Settings, *, stop_flag: Any = None, ready_flag: Any = None) -> None:
    """Run the operator until stopped: cluster-wide, or in ``config.namespaces``."""
    kopf.configure(
        verbose=config.log_level.upper() == "DEBUG",
        log_format=kopf.LogFormat.JSON if config.log_format == "json" else kopf.LogFormat.FULL,
    )
    logging.getLogger().setLevel(config.log_level.upper())
    kopf.run(
        clusterwide=not config.namespaces,
        namespaces=config.namespaces,
        standalone=not config.kopf_peering,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
        memo=kopf.Memo({SETTINGS: config}),
    )


def configure(settings: kopf.OperatorSettings, config: Settings) -> None:
    """kopf's settings for stopbudget: our own names for everything kopf stores.

    In this module ``settings`` is always kopf's (the name kopf passes it by) and
    ``config`` always stopbudget's own :class:`Settings`, built once by the CLI."""
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=api.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=api.GROUP, key="last-handled-configuration"
    )
    # Handler logs stay logs; stopbudget posts its own Events for what matters.
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = "stopbudget"
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    # CRDs are not watched: RBAC then needs nothing on apiextensions.
    settings.scanning.disabled = True
    settings.peering.standalone = not config.kopf_peering
    settings.background.cancellation_polling = 5


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod, the service account; elsewhere the kubeconfig (read now, not at import)."""
    info = kopf.login_with_service_account(**kwargs)
    return info if info is not None else kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    config: Settings = memo.get(SETTINGS) or from_env()
    configure(settings, config)
    operator = build_operator(config)
    memo["operator"] = operator
    memo["runners"] = await serve(operator, config)
    READINESS.ready = True


def build_operator(config: Settings) -> Operator:
    """The operator process's clients and metrics, from its settings."""
    metrics = OperatorMetrics()
    reader = PrometheusReader(
        config, metrics, window=config.query_window,
        max_concurrency=config.prometheus_max_concurrency,
    )  # fmt: skip
    return Operator(
        settings=config,
        kube=Kube.connect(workers=config.kube_workers),
        reader=reader,
        metrics=metrics,
        audit_slots=asyncio.Semaphore(config.max_concurrent_audits),
    )


async def serve(operator: Operator, config: Settings) -> list[web.AppRunner]:
    """Metrics and health, and the Alertmanager webhook when a token file is set."""
    runner, port = await endpoints.serve(
        endpoints.app(operator.metrics, READINESS), config.bind_address, config.metrics_port
    )
    log.info("metrics and health on %s:%d", config.bind_address, port)
    if config.webhook_token_file is None:
        log.info("Alertmanager webhook disabled: STOPBUDGET_WEBHOOK_TOKEN_FILE is not set")
        return [runner]
    await know_the_policies(operator, config)
    app = webhook.create_app(
        token_file=config.webhook_token_file,
        on_alerts=operator.on_alerts,
        policies=operator.targets,
        metrics=operator.metrics,
        ready=operator.webhook_ready,
    )
    hook, port = await endpoints.serve(
        app, config.bind_address, config.webhook_port, auto_decompress=False
    )
    log.info("Alertmanager webhook on %s:%d/alertmanager", config.bind_address, port)
    return [runner, hook]


async def know_the_policies(operator: Operator, config: Settings) -> None:
    """List the policies, so that the webhook waits until each loop has met its own."""
    operator.settle_deadline = asyncio.get_running_loop().time() + WEBHOOK_SETTLE_SECONDS
    try:
        operator.expected = await operator.kube.list_policies(config.namespaces)
    except KubeError as exc:
        log.warning(
            "StopPolicies not listed (%s): the webhook answers 503 for %d s", exc,
            WEBHOOK_SETTLE_SECONDS,
        )  # fmt: skip


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    READINESS.ready = False
    operator: Operator | None = memo.get("operator")
    if operator is not None:
        await operator.close()
    for runner in memo.get("runners", []):
        await runner.cleanup()
    # kopf closes its API sessions after the cleanup handlers; a TLS connection needs the
    # loop a little longer to finish closing (aiohttp's graceful-shutdown advice), or it is
    # left half-closed when the loop ends. This task keeps the loop that long.
    asyncio.get_running_loop().create_task(linger(TLS_CLOSE_GRACE), name="tls close grace")


async def linger(seconds: float) -> None:
    """Sleep ``seconds``, cancelled or not: asyncio.run waits for cancelled tasks to end."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (left := deadline - loop.time()) > 0:
        try:
            await asyncio.sleep(left)
        except asyncio.CancelledError:
            continue


@kopf.daemon(*RESOURCE, cancellation_backoff=1.0, cancellation_timeout=10.0)
async def control_loop(
    namespace: str | None,
    name: str,
    body: kopf.Body,
    meta: kopf.Meta,
    memo: Any,
    stopped: kopf.DaemonStopped,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    """The policy's loop: a tick, its Events, then wait for the interval (or a wake-up)."""
    assert namespace is not None  # StopPolicy is namespaced
    operator: Operator = memo["operator"]
    mailbox = operator.mailbox(namespace, name)
    tick.meet(mailbox, body.get("spec", {}), body.get("status"))
    if (body.get("status") or {}).get("lastEvaluationTime"):
        # An operator restart starts every loop at once: spread the first ticks of
        # existing policies so they do not stay in step. A new policy ticks at once.
        await mailbox.sleep(tick.first_delay(namespace, name, body.get("spec", {})), stopped.wait)
    while not stopped:
        async with operator.ticking() as open_:
            if not open_:
                return  # the operator is stopping
            try:
                result = await tick.tick(
                    operator, mailbox, meta, body.get("spec", {}), body.get("status")
                )
            except tick.PolicyGone:
                return  # deleted meanwhile: kopf stops this loop
        for event in result.events:
            kopf.event(body, type=event.type, reason=event.reason, message=event.message[:1024])
            logger.info("%s: %s", event.reason, event.message)
        await mailbox.sleep(result.interval, stopped.wait)


@kopf.on.update(*RESOURCE, field="spec")
@kopf.on.update(*RESOURCE, field="metadata.annotations")
def changed(namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    """A spec or annotation change (mode, pause, audit request) takes effect now."""
    assert namespace is not None
    operator: Operator = memo["operator"]
    operator.mailbox(namespace, name).wake.set()


@kopf.on.delete(*RESOURCE, retries=5, backoff=5)
async def deleted(
    namespace: str | None,
    name: str,
    body: kopf.Body,
    memo: Any,
    logger: kopf.Logger,
    retry: int,
    **_: Any,
) -> None:
    """Put back the sink's original value, then forget the policy."""
    assert namespace is not None
    operator: Operator = memo["operator"]
    try:
        message = await restore(operator, namespace, body.get("spec", {}), body.get("status"))
    except KubeError as exc:
        if retry < 4:
            raise kopf.TemporaryError(f"restore failed, retrying: {exc}", delay=5) from exc
        message = f"restore failed, giving up after {retry + 1} attempts: {exc}"
        logger.error(message)  # noqa: TRY400 - the traceback adds nothing to the API error
    logger.info(message)
    await operator.forget(namespace, name)
