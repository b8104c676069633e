"""The kopf layer: THIN.  Each handler parses what kopf hands it, calls one function, writes.

* startup/cleanup: operator settings, the process's services, the HTTP servers;
* a daemon per StopPolicy: :func:`stopbudget.controller.reconcile.tick` every
  ``spec.control.interval`` (sooner when woken by a spec change, an alert or a
  finished audit), then the status patch and the Events it returns;
* spec or annotation changes wake that daemon;
* delete: :func:`stopbudget.controller.reconcile.restore` puts the sink back (kopf holds
  the finalizer until it returns).

Run it with ``stopbudget run`` (or ``kopf run -m stopbudget.controller.handlers``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from stopbudget import api
from stopbudget.clients import endpoints, webhook
from stopbudget.clients.kube import Kube, KubeError, TargetNotFound
from stopbudget.clients.metrics import OperatorMetrics
from stopbudget.clients.prometheus import PrometheusReader
from stopbudget.clients.settings import Settings, from_env
from stopbudget.controller import reconcile

log = logging.getLogger(__name__)

RESOURCE = (api.GROUP, api.VERSION, api.PLURAL)
FINALIZER = f"{api.GROUP}/finalizer"
READINESS = endpoints.Readiness()
#: Seconds the loop runs on after kopf closes its sessions, for TLS connections to close.
TLS_CLOSE_GRACE = 0.25
#: Longest the webhook answers 503 after a start while it has not met every StopPolicy.
WEBHOOK_SETTLE_SECONDS = 60.0


def run(
    config: Settings,
    *,
    stop_flag: Any = None,
    ready_flag: Any = None,
) -> None:
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
    )


def configure(settings: kopf.OperatorSettings, config: Settings) -> None:
    """kopf's settings for stopbudget: our own names for everything kopf stores."""
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
    config = from_env()
    configure(settings, config)
    metrics = OperatorMetrics()
    services = reconcile.Services(
        settings=config,
        kube=Kube.connect(workers=config.kube_workers),
        reader=PrometheusReader(
            config,
            metrics,
            window=config.query_window,
            max_concurrency=config.prometheus_max_concurrency,
        ),
        metrics=metrics,
        audit_slots=asyncio.Semaphore(config.max_concurrent_audits),
    )
    runners = []
    runner, port = await endpoints.serve(
        endpoints.app(metrics, READINESS), config.bind_address, config.metrics_port
    )
    runners.append(runner)
    log.info("metrics and health on %s:%d", config.bind_address, port)
    if config.webhook_token_file is not None:
        await know_the_policies(services, config)
        webhook_app = webhook.create_app(
            token_file=config.webhook_token_file,
            on_alerts=services.on_alerts,
            policies=services.targets,
            metrics=metrics,
            ready=services.webhook_ready,
        )
        runner, port = await endpoints.serve(
            webhook_app, config.bind_address, config.webhook_port, auto_decompress=False
        )
        runners.append(runner)
        log.info("Alertmanager webhook on %s:%d/alertmanager", config.bind_address, port)
    else:
        log.info("Alertmanager webhook disabled: STOPBUDGET_WEBHOOK_TOKEN_FILE is not set")
    memo["services"] = services
    memo["runners"] = runners
    READINESS.ready = True


async def know_the_policies(services: reconcile.Services, config: Settings) -> None:
    """List the policies, so that the webhook waits until each daemon has met its own."""
    services.settle_deadline = asyncio.get_running_loop().time() + WEBHOOK_SETTLE_SECONDS
    try:
        services.expected = await services.kube.list_policies(config.namespaces)
    except KubeError as exc:
        log.warning(
            "StopPolicies not listed (%s): the webhook answers 503 for %d s", exc,
            WEBHOOK_SETTLE_SECONDS,
        )  # fmt: skip


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    READINESS.ready = False
    services: reconcile.Services | None = memo.get("services")
    if services is not None:
        await services.close()
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
    """The policy's loop: a tick, its status and Events, then wait for the interval."""
    assert namespace is not None  # StopPolicy is namespaced
    services: reconcile.Services = memo["services"]
    runtime = services.runtime(namespace, name)
    reconcile.meet(runtime, body.get("spec", {}), body.get("status"))
    if (body.get("status") or {}).get("lastEvaluationTime"):
        # An operator restart starts every daemon at once: spread the first ticks of
        # existing policies so they do not stay in step. A new policy ticks at once.
        delay = reconcile.first_delay(namespace, name, body.get("spec", {}))
        await runtime.sleep(delay, stopped.wait)
    while not stopped:
        async with services.ticking() as open_:
            if not open_:
                return  # the operator is stopping
            result = await reconcile.tick(
                services, runtime, meta, body.get("spec", {}), body.get("status")
            )
            try:
                stored = await services.kube.patch_policy_status(namespace, name, result.status)
                # What the API server stored (the merge patch applied), never the patch body.
                runtime.status = dict(stored.get("status") or {})
                if result.remove_audit_annotation:
                    await services.kube.remove_policy_annotation(namespace, name)
                    runtime.consumed_request = (meta.get("annotations") or {}).get(
                        api.ANNOTATION_AUDIT_REQUESTED
                    )
            except TargetNotFound:
                return  # deleted meanwhile: kopf stops this daemon
            except KubeError as exc:
                logger.warning("status not written: %s", exc)
        for event in result.events:
            kopf.event(body, type=event.type, reason=event.reason, message=event.message[:1024])
            logger.info("%s: %s", event.reason, event.message)
        await runtime.sleep(result.interval, stopped.wait)


@kopf.on.update(*RESOURCE, field="spec")
@kopf.on.update(*RESOURCE, field="metadata.annotations")
def changed(namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    """A spec or annotation change (mode, pause, audit request) takes effect now."""
    assert namespace is not None
    services: reconcile.Services = memo["services"]
    services.runtime(namespace, name).wake.set()


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
    services: reconcile.Services = memo["services"]
    try:
        message = await reconcile.restore(
            services, namespace, body.get("spec", {}), body.get("status")
        )
    except KubeError as exc:
        if retry < 4:
            raise kopf.TemporaryError(f"restore failed, retrying: {exc}", delay=5) from exc
        message = f"restore failed, giving up after {retry + 1} attempts: {exc}"
        logger.error(message)  # noqa: TRY400 - the traceback adds nothing to the API error
    logger.info(message)
    await services.forget(namespace, name)
