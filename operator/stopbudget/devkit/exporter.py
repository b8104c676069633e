"""An engine-style ``/metrics`` endpoint whose values tests and the demo set.

It publishes the series a serving engine publishes, under the engines' real
names (see ``data/metrics/vllm_docs_design_metrics_example_output.prom``):
vLLM V1 ``vllm:*`` with a ``model_name`` label, SGLang ``sglang:*`` and Hugging
Face TGI ``tgi_*``, so the presets in ``promql.py`` read them unchanged.  One
exporter stands for one replica serving one model::

    with EngineExporter(model_name="meta-llama/Llama-3.1-8B-Instruct") as engine:
        engine.set_load(waiting=12, running=8, kv_cache=0.7)
        engine.finish_request(latency=4.2, finished_reason="length", generation_tokens=512)

The endpoint always answers in the classic text format 0.0.4, whatever the
scraper asks for: Prometheus asks for OpenMetrics first, and names with colons
must arrive intact (``prometheus-client`` is pinned below 0.23 for the same
reason, see DEVELOPERS.md).  ``_created`` series are left out, as vLLM does.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from stopbudget.core import promql

HOST = "127.0.0.1"
ENGINES = ("vllm", "sglang", "tgi")

# Buckets of the engines themselves.
VLLM_E2E_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
    120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
VLLM_TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
SGLANG_E2E_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
)  # fmt: skip
#: TGI (metrics-exporter-prometheus): 35 buckets growing by 1.5 from 0.00015 s.
TGI_DURATION_BUCKETS = tuple(0.0001 * 1.5**i for i in range(1, 36))
#: vLLM's finish reasons, created at 0 when the engine starts.
FINISH_REASONS = ("stop", "length", "abort")


class _WithoutCreated(Collector):
    """The families of a registry without their ``_created`` samples."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterable[Metric]:
        for family in self.registry.collect():
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family


class _Series:
    """The metric objects of one exporter state (label names are fixed per registry)."""

    def __init__(self, model_name: str, engines: Sequence[str], labels: Mapping[str, str]) -> None:
        unknown = set(engines) - set(ENGINES)
        if unknown:
            raise ValueError(f"unknown engines {sorted(unknown)}: choose from {ENGINES}")
        self.engines = tuple(engines)
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        extra = dict(labels)
        model = {**extra, "model_name": model_name}
        names, values = tuple(model), tuple(model.values())
        self.waiting: list[Any] = []
        self.running: list[Any] = []
        self.kv_cache: list[Any] = []
        self.latency: list[Any] = []
        self.generated: list[Any] = []
        self.prompt: list[Any] = []
        self.success: Counter | None = None
        self.success_values = values
        self.request_tokens: Any = None
        if "vllm" in engines:
            self.waiting.append(
                Gauge(
                    promql.VLLM_WAITING,
                    "Number of requests waiting to be processed.",
                    names,
                    registry=r,
                ).labels(*values)
            )
            self.running.append(
                Gauge(
                    promql.VLLM_RUNNING,
                    "Number of requests in model execution batches.",
                    names,
                    registry=r,
                ).labels(*values)
            )
            self.kv_cache.append(
                Gauge(
                    promql.VLLM_KV_CACHE,
                    "KV-cache usage. 1 means 100 percent usage.",
                    names,
                    registry=r,
                ).labels(*values)
            )
            self.latency.append(
                Histogram(
                    promql.VLLM_E2E_LATENCY,
                    "Histogram of e2e request latency in seconds.",
                    names,
                    buckets=VLLM_E2E_BUCKETS,
                    registry=r,
                ).labels(*values)
            )
            self.success = Counter(
                promql.VLLM_REQUEST_SUCCESS,
                "Count of successfully processed requests.",
                (*names, "finished_reason"),
                registry=r,
            )
            for reason in FINISH_REASONS:
                self.success.labels(*values, reason)
            self.generated.append(
                Counter(
                    promql.VLLM_GENERATION_TOKENS,
                    "Number of generation tokens processed.",
                    names,
                    registry=r,
                ).labels(*values)
            )
            self.prompt.append(
                Counter(
                    promql.VLLM_PROMPT_TOKENS,
                    "Number of prefill tokens processed.",
                    names,
                    registry=r,
                ).labels(*values)
            )
            self.request_tokens = Histogram(
                "vllm:request_generation_tokens",
                "Number of generation tokens processed.",
                names,
                buckets=VLLM_TOKEN_BUCKETS,
                registry=r,
            ).labels(*values)
        if "sglang" in engines:
            self.waiting.append(
                Gauge(
                    promql.SGLANG_QUEUE,
                    "The number of requests in the waiting queue",
                    names,
                    registry=r,
                ).labels(*values)
            )
            self.running.append(
                Gauge(
                    promql.SGLANG_RUNNING, "The number of running requests", names, registry=r
                ).labels(*values)
            )
            self.kv_cache.append(
                Gauge(promql.SGLANG_TOKEN_USAGE, "The token usage", names, registry=r).labels(
                    *values
                )
            )
            self.latency.append(
                Histogram(
                    promql.SGLANG_E2E_LATENCY,
                    "Histogram of End-to-end request latency in seconds",
                    names,
                    buckets=SGLANG_E2E_BUCKETS,
                    registry=r,
                ).labels(*values)
            )
            self.generated.append(
                Counter(
                    promql.SGLANG_GENERATION_TOKENS,
                    "Number of generation tokens processed.",
                    names,
                    registry=r,
                ).labels(*values)
            )
        if "tgi" in engines:
            tgi_names, tgi_values = tuple(extra), tuple(extra.values())
            self.waiting.append(self._tgi_gauge(promql.TGI_QUEUE, "Current queue size", extra))
            self.running.append(self._tgi_gauge(promql.TGI_BATCH_SIZE, "Current batch size", extra))
            histogram = Histogram(
                promql.TGI_REQUEST_DURATION,
                "End-to-end generate request duration (in seconds)",
                tgi_names,
                buckets=TGI_DURATION_BUCKETS,
                registry=r,
            )
            self.latency.append(histogram.labels(*tgi_values) if tgi_names else histogram)

    def _tgi_gauge(self, name: str, help_text: str, labels: Mapping[str, str]) -> Any:
        gauge = Gauge(name, help_text, tuple(labels), registry=self.registry)
        return gauge.labels(*labels.values()) if labels else gauge


class EngineExporter:
    """A ``/metrics`` endpoint on 127.0.0.1 (random port) with one replica's engine series.

    ``engines`` picks the families published (vllm, sglang, tgi); the load
    setters write all of them.  ``labels`` are extra labels on every series
    (TGI's series carry only these: TGI has no model label).
    """

    def __init__(
        self,
        model_name: str = "meta-llama/Llama-3.1-8B-Instruct",
        *,
        engines: Sequence[str] = ENGINES,
        labels: Mapping[str, str] | None = None,
        port: int = 0,
    ) -> None:
        self._lock = threading.Lock()
        self._series = _Series(model_name, engines, labels or {})
        self.model_name = model_name
        self.port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.scrapes = 0

    # -- serving
    @property
    def target(self) -> str:
        """``host:port``, as a Prometheus target."""
        return f"{HOST}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.target}/metrics"

    @property
    def running(self) -> bool:
        return self._server is not None

    def exposition(self) -> bytes:
        """The current ``/metrics`` body (text format 0.0.4)."""
        with self._lock:
            registry = self._series.registry
        view = CollectorRegistry(auto_describe=False)
        view.register(_WithoutCreated(registry))
        return generate_latest(view)

    def start(self) -> Self:
        """Serve on ``port`` (the last one used after a stop; random at first)."""
        if self._server is not None:
            return self
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = exporter.exposition()
                exporter.scrapes += 1
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        server = ThreadingHTTPServer((HOST, self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"exporter-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving (the port is kept for a later :meth:`start`)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- values
    def reset(
        self,
        model_name: str | None = None,
        *,
        engines: Sequence[str] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        """Start over with fresh series (zeros); the old ones vanish from the next scrape."""
        series = _Series(
            model_name or self.model_name,
            self._series.engines if engines is None else engines,
            labels or {},
        )
        with self._lock:
            self._series = series
            self.model_name = model_name or self.model_name

    def clear(self) -> None:
        """Publish no engine series at all (the endpoint still answers)."""
        with self._lock:
            self._series = _Series(self.model_name, (), {})

    def set_load(
        self,
        *,
        waiting: float | None = None,
        running: float | None = None,
        kv_cache: float | None = None,
    ) -> None:
        """Set the queue (waiting requests), running requests and KV-cache use in [0, 1].

        NaN is allowed, to test how readers treat it.
        """
        s = self._series
        for value, gauges in ((waiting, s.waiting), (running, s.running), (kv_cache, s.kv_cache)):
            if value is not None:
                for gauge in gauges:
                    gauge.set(value)

    def finish_request(
        self,
        latency: float,
        *,
        finished_reason: str = "stop",
        prompt_tokens: int = 0,
        generation_tokens: int = 0,
        count: int = 1,
    ) -> None:
        """Record ``count`` finished requests, each with this latency (s) and token counts."""
        if count < 0 or latency < 0 or math.isnan(latency):
            raise ValueError("count and latency must be non-negative numbers")
        s = self._series
        for _ in range(count):
            for histogram in s.latency:
                histogram.observe(latency)
            if s.request_tokens is not None:
                s.request_tokens.observe(generation_tokens)
        if s.success is not None and count:
            s.success.labels(*s.success_values, finished_reason).inc(count)
        for counter in s.generated:
            counter.inc(generation_tokens * count)
        for counter in s.prompt:
            counter.inc(prompt_tokens * count)
