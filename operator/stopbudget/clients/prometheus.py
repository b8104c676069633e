"""Reads a policy's signals from Prometheus into a :class:`~stopbudget.core.law.Observation`.

The queries come from :func:`stopbudget.core.promql.plan`; they run through
``prometheus-api-client`` in a small thread pool, off the event loop, all the
queries of one tick at once (bounded by ``max_concurrency`` across policies).

Reading a result follows KEDA's Prometheus scaler, without its most
complained-about default: an empty result, NaN and ±Inf are *no data* (value
None and a reason), never 0.  More than one series where one number is expected
is an error naming the query and the label sets.  A scalar result is accepted.
Timeouts, connection errors, HTTP errors and malformed answers are caught,
counted in ``stopbudget_prometheus_query_errors_total{kind}`` (kinds:
timeout, connection, http, bad_response, no_data, ambiguous) and reported on
the reading; :meth:`PrometheusReader.observe` never raises because of them.

The bearer token file is read on every request, so a rotated Secret is picked
up without a restart.  Failed queries are not retried within a tick: the next
tick is the retry, and ``control.fallback`` decides what a run of failures means.
"""

from __future__ import annotations

import ast
import asyncio
import json
import logging
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import requests
from prometheus_api_client.exceptions import PrometheusApiClientException
from prometheus_api_client.prometheus_connect import PrometheusConnect
from urllib3.exceptions import InsecureRequestWarning
from urllib3.util.retry import Retry

from stopbudget.api import StopPolicySpec
from stopbudget.clients.metrics import OperatorMetrics
from stopbudget.clients.settings import Settings
from stopbudget.core.law import Observation, SignalReading
from stopbudget.core.promql import DEFAULT_WINDOW, PromQLError, Query, Role, plan

log = logging.getLogger(__name__)

#: How much of a query or label set an error message quotes.
_QUOTE_LIMIT = 300
#: The queueing model's inputs, read into the observation when there is a number.
_MODEL_ROLES = frozenset({Role.ARRIVAL_RATE, Role.THROUGHPUT, Role.SERVED_TOKENS})


class ErrorKind(StrEnum):
    """Why a query gave no usable number (the ``kind`` label of the error counter)."""

    TIMEOUT = "timeout"
    CONNECTION = "connection"
    HTTP = "http"
    BAD_RESPONSE = "bad_response"
    NO_DATA = "no_data"
    AMBIGUOUS = "ambiguous"


@dataclass(frozen=True)
class Result:
    """The outcome of one query: a finite number, or why there is none."""

    value: float | None
    error: str | None = None
    kind: ErrorKind | None = None


def _short(text: str, limit: int = _QUOTE_LIMIT) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _labels(metric: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(metric.items())) + "}"


def _number(sample: Any, expr: str) -> Result:
    """A ``[timestamp, "value"]`` pair as a finite number."""
    if not isinstance(sample, list | tuple) or len(sample) != 2:
        return Result(
            None,
            f"malformed sample {_short(repr(sample))} for {_short(expr)}",
            ErrorKind.BAD_RESPONSE,
        )
    try:
        value = float(sample[1])
    except (TypeError, ValueError):
        return Result(
            None,
            f"value {_short(repr(sample[1]))} is not a number (query: {_short(expr)})",
            ErrorKind.BAD_RESPONSE,
        )
    if math.isnan(value) or math.isinf(value):
        return Result(
            None,
            f"no data: the query returned {sample[1]} (e.g. no requests in the rate window)",
            ErrorKind.NO_DATA,
        )
    return Result(value)


def interpret(result: Any, expr: str) -> Result:
    """Turn the ``data.result`` of an instant query into one number or a reason.

    A vector of exactly one sample and a scalar are numbers; an empty vector,
    NaN and ±Inf are no data; several series are ambiguous; anything else
    (a range vector, a string, a native histogram, junk) is a bad response.
    """
    if not isinstance(result, list):
        return Result(None, f"unexpected result {_short(repr(result))}", ErrorKind.BAD_RESPONSE)
    if not result:
        return Result(
            None,
            "no data: the query returned no series (target not scraped, or the selector "
            "matches nothing)",
            ErrorKind.NO_DATA,
        )
    if not isinstance(result[0], dict):
        # A scalar (or string) result: [timestamp, "value"].
        return _number(result, expr)
    if len(result) > 1:
        shown = ", ".join(_labels(item.get("metric") or {}) for item in result[:3])
        more = f" and {len(result) - 3} more" if len(result) > 3 else ""
        return Result(
            None,
            f"query {_short(expr)} returned {len(result)} series where one is expected: "
            f"{_short(shown)}{more}; aggregate it, e.g. with sum(...) or max(...)",
            ErrorKind.AMBIGUOUS,
        )
    item = result[0]
    if "value" not in item:
        what = "a range vector" if "values" in item else "no value"
        return Result(
            None,
            f"query {_short(expr)} returned {what}; an instant number is expected "
            "(wrap a range in e.g. avg_over_time or rate)",
            ErrorKind.BAD_RESPONSE,
        )
    return _number(item["value"], expr)


class TokenFileError(RuntimeError):
    """The bearer token file could not be read."""


class _BearerFromFile(requests.auth.AuthBase):
    """Sets ``Authorization: Bearer <token>``, reading the file on every request."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        try:
            token = self.path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise TokenFileError(
                f"cannot read the Prometheus token file {self.path}: {exc.strerror or exc}"
            ) from exc
        request.headers["Authorization"] = f"Bearer {token}"
        return request


_HTTP_ERROR = re.compile(r"^HTTP Status Code (\d+) \((b'.*'|b\".*\")\)$", re.DOTALL)


def _http_error(exc: PrometheusApiClientException) -> str:
    """One line from prometheus-api-client's ``HTTP Status Code 400 (b'{...}')``."""
    text = str(exc)
    match = _HTTP_ERROR.match(text)
    if match is None:
        return text
    code = match.group(1)
    try:
        raw = ast.literal_eval(match.group(2)).decode("utf-8", errors="replace")
    except (ValueError, SyntaxError, AttributeError):
        return text
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if isinstance(body, dict) and "error" in body:
        return f"HTTP {code}: {body.get('errorType', 'error')}: {body['error']}"
    return f"HTTP {code}: {raw}"


class PrometheusReader:
    """Runs the queries of a policy's tick against one Prometheus.

    ``window`` is the rate window of the presets' counter and histogram queries.
    Call :meth:`close` (or use ``async with``) to release the threads and sockets.
    """

    def __init__(
        self,
        settings: Settings,
        metrics: OperatorMetrics,
        *,
        window: str = DEFAULT_WINDOW,
        max_concurrency: int = 8,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.settings = settings
        self.metrics = metrics
        self.window = window
        self.timeout = settings.prometheus_timeout_seconds
        session = requests.Session()
        session.verify = (
            False
            if settings.prometheus_insecure_skip_verify
            else str(settings.prometheus_ca_file)
            if settings.prometheus_ca_file is not None
            else True
        )
        if settings.prometheus_insecure_skip_verify:
            # The user chose this; one log line instead of a warning per request.
            warnings.filterwarnings("ignore", category=InsecureRequestWarning)
            log.warning("TLS verification of Prometheus is off (insecure skip verify)")
        session.trust_env = False  # no proxy or netrc surprises from the operator's env
        if settings.prometheus_token_file is not None:
            session.auth = _BearerFromFile(settings.prometheus_token_file)
        self._client = PrometheusConnect(
            url=settings.prometheus_url.rstrip("/"),
            session=session,
            # No retries inside a tick (the next tick is the retry); read errors are
            # raised as themselves so that a read timeout is reported as a timeout.
            retry=Retry(total=0, read=False, redirect=0, status=0, raise_on_status=False),
        )
        # requests takes float seconds; the client annotates its parameter as int.
        self._request_timeout: Any = self.timeout
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="promql")
        self._max_concurrency = max_concurrency
        self._slots: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}

    async def observe(self, namespace: str, name: str, spec: StopPolicySpec) -> Observation:
        """Everything one tick of the policy reads from Prometheus; never raises for I/O."""
        try:
            queries = plan(spec, window=self.window)
        except PromQLError as exc:
            return self._unplannable(spec, str(exc))
        results = await asyncio.gather(*(self.run(namespace, name, q.expr) for q in queries))
        return self._observation(queries, results)

    async def run(self, namespace: str, name: str, expr: str) -> Result:
        """One instant query, counted under the policy's labels."""
        self.metrics.queries.labels(namespace, name).inc()
        loop = asyncio.get_running_loop()
        slots = self._slots.get(loop)
        if slots is None:  # one per event loop: a semaphore is bound to its loop
            self._slots = {loop: (slots := asyncio.Semaphore(self._max_concurrency))}
        async with slots:
            future = loop.run_in_executor(self._pool, self._query, expr)
            try:
                # The HTTP client has its own timeout; this one only guards against a
                # server that trickles bytes forever.
                result = await asyncio.wait_for(future, timeout=self.timeout * 2 + 1)
            except TimeoutError:
                result = Result(
                    None, f"timeout: no answer within {self.timeout:g}s", ErrorKind.TIMEOUT
                )
        if result.kind is not None:
            self.metrics.query_errors.labels(namespace, name, result.kind.value).inc()
            log.debug("%s/%s: query %s: %s", namespace, name, _short(expr, 120), result.error)
        return result

    def _query(self, expr: str) -> Result:
        """Blocking: one query, every failure turned into a :class:`Result`."""
        try:
            data = self._client.custom_query(
                expr,
                params={"timeout": f"{self.timeout:g}"},  # Prometheus stops evaluating too
                timeout=self._request_timeout,
            )
        except requests.Timeout:
            return Result(None, f"timeout: no answer within {self.timeout:g}s", ErrorKind.TIMEOUT)
        except requests.exceptions.JSONDecodeError as exc:
            return Result(None, f"answer is not JSON: {exc}", ErrorKind.BAD_RESPONSE)
        except requests.exceptions.SSLError as exc:
            return Result(None, f"TLS error: {_short(str(exc))}", ErrorKind.CONNECTION)
        except requests.RequestException as exc:
            return Result(
                None,
                f"cannot reach Prometheus at {self.settings.prometheus_url}: "
                f"{_short(str(exc), 200)}",
                ErrorKind.CONNECTION,
            )
        except PrometheusApiClientException as exc:
            return Result(None, _short(_http_error(exc)), ErrorKind.HTTP)
        except (KeyError, TypeError) as exc:
            return Result(None, f"answer lacks data.result ({exc!r})", ErrorKind.BAD_RESPONSE)
        except TokenFileError as exc:  # no request was sent: like a failed connection
            return Result(None, str(exc), ErrorKind.CONNECTION)
        except Exception as exc:  # a tick must never crash on a bad answer
            log.warning("unexpected error from query %s", _short(expr, 120), exc_info=True)
            return Result(None, f"{type(exc).__name__}: {exc}", ErrorKind.BAD_RESPONSE)
        return interpret(data, expr)

    def _observation(self, queries: Sequence[Query], results: Sequence[Result]) -> Observation:
        signals: list[SignalReading] = []
        em: float | None = None
        em_error: str | None = None
        truncation: float | None = None
        # The queueing model's inputs: no data leaves the law's reactive rule, no failure.
        model: dict[Role, float] = {}
        for query, result in zip(queries, results, strict=True):
            if query.role is Role.SIGNAL:
                assert query.target is not None
                signals.append(SignalReading(query.name, query.target, result.value, result.error))
            elif query.role is Role.QUALITY:
                em, em_error = result.value, result.error
                if em is not None and not 0.0 <= em <= 1.0:
                    em, em_error = None, f"live EM {em:g} is outside [0, 1]: check quality.query"
            elif query.role is Role.TRUNCATION and result.value is not None:
                truncation = min(max(result.value, 0.0), 1.0)
            elif query.role in _MODEL_ROLES and result.value is not None:
                model[query.role] = max(result.value, 0.0)
        return Observation(
            signals=tuple(signals),
            em=em,
            em_error=em_error,
            truncation=truncation,
            arrival_rate=model.get(Role.ARRIVAL_RATE),
            throughput=model.get(Role.THROUGHPUT),
            served_tokens=model.get(Role.SERVED_TOKENS),
        )

    @staticmethod
    def _unplannable(spec: StopPolicySpec, why: str) -> Observation:
        signals = tuple(SignalReading(s.name, s.target, None, why) for s in spec.load.signals)
        em_error = why if spec.quality.query is not None else None
        return Observation(signals=signals, em_error=em_error)

    def close(self) -> None:
        """Release the worker threads and the HTTP connections."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()

    async def __aenter__(self) -> PrometheusReader:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
