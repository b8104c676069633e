"""PromQL for the load and quality signals: the presets' queries and the per-tick plan. PURE.

A policy names its load signals (``spec.load.signals``); a signal without its
own ``query`` takes the query of its name from the policy's preset (vLLM,
SGLang, TGI or llama.cpp), scoped by ``spec.load.selector``.  :func:`plan` turns a spec into
the queries one tick runs; ``prometheus.py`` runs them.  With
``control.model: queueing`` a tick also reads the arrival rate, the generated
tokens per second and per finished request, where the preset's engine exports
them (:func:`arrival_rate_query`); a missing one makes the law use its reactive
rule, never a failure of the tick.

Every preset query returns one series (it aggregates over replicas) or
nothing.  Nothing means "no data" (the engine's series are missing: wrong
selector, target down) and is never read as 0.  An engine that is up but idle
is different: its latency histogram has no requests in the window, which
``histogram_quantile`` would report as NaN; the preset queries say 0 in that
case (no request waited), so an idle fleet does not fall back for lack of
metrics.  A user's own query gets no such help: its NaN is "no data".

Label values are written as PromQL string literals with the escapes that
Prometheus' lexer and Go's ``strconv.Unquote`` read back exactly (backslash,
double quote, newline and every other control character); the tests check the
round trip against a real Prometheus.

This module is pure: no I/O, no clock.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from stopbudget.api import PRESET_SIGNALS, LoadModel, Preset, StopPolicySpec

#: A metric name as Prometheus reads it in a query (colons are legal, e.g. ``vllm:...``).
METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
#: A label name.
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
#: A PromQL range duration such as ``30s``, ``2m`` or ``1h30m``.
RANGE = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")

#: Rate window of the presets' counter and histogram queries.  Prometheus needs two
#: samples in it; with the common 15-30 s scrape interval 2m holds four or more.
DEFAULT_WINDOW = "2m"
#: Quantile of the ``latencyP95`` signal.
LATENCY_QUANTILE = 0.95

# vLLM V1 (model_name label; the example output in data/metrics/).
VLLM_WAITING = "vllm:num_requests_waiting"
VLLM_RUNNING = "vllm:num_requests_running"
VLLM_KV_CACHE = "vllm:kv_cache_usage_perc"
VLLM_E2E_LATENCY = "vllm:e2e_request_latency_seconds"
VLLM_REQUEST_SUCCESS = "vllm:request_success_total"
VLLM_PROMPT_TOKENS = "vllm:prompt_tokens_total"
VLLM_GENERATION_TOKENS = "vllm:generation_tokens_total"
#: The ``finished_reason`` of a request stopped by its token budget (vLLM).
FINISHED_BY_LENGTH = "length"
# SGLang (model_name label).
SGLANG_QUEUE = "sglang:num_queue_reqs"
SGLANG_RUNNING = "sglang:num_running_reqs"
SGLANG_TOKEN_USAGE = "sglang:token_usage"  # noqa: S105 - a metric name
SGLANG_E2E_LATENCY = "sglang:e2e_request_latency_seconds"
SGLANG_GENERATION_TOKENS = "sglang:generation_tokens_total"
# Hugging Face TGI (no model label: one server, one model).
TGI_QUEUE = "tgi_queue_size"
#: Counter of requests received (TGI's only arrival counter among the presets' engines).
TGI_REQUEST_COUNT = "tgi_request_count"
#: Histogram of generated tokens per finished request.
TGI_GENERATED_TOKENS = "tgi_request_generated_tokens"
TGI_BATCH_SIZE = "tgi_batch_current_size"
TGI_REQUEST_DURATION = "tgi_request_duration"
# llama.cpp's llama-server with --metrics (no label at all; shared/engines/README.md).
LLAMACPP_DEFERRED = "llamacpp:requests_deferred"
LLAMACPP_PROCESSING = "llamacpp:requests_processing"
#: Counter of generated tokens, added when a request finishes.
LLAMACPP_TOKENS_PREDICTED = "llamacpp:tokens_predicted_total"
LLAMACPP_PROMPT_TOKENS = "llamacpp:prompt_tokens_total"


class PromQLError(ValueError):
    """A query cannot be built from the spec; the message names the field and the fix."""


@dataclass(frozen=True)
class EngineSeries:
    """The series of one serving engine that the presets read."""

    #: Gauge of requests waiting for a slot, summed over replicas.
    queue: str
    #: Latency histogram (base name, without ``_bucket``), in seconds; None if none.
    latency: str | None = None
    #: Gauge of KV-cache use in [0, 1], max over replicas; None if the engine has none.
    kv_cache: str | None = None
    #: Counter of finished requests with a ``finished_reason`` label; None if none.
    finished: str | None = None
    #: Gauge of requests being generated, summed over replicas (a signal where the preset
    #: lists ``running``); None if the engine has none.
    running: str | None = None
    #: Counter of generated tokens (its rate is throughput); None if not a signal.
    generated: str | None = None
    #: The queueing model's series (``control.model: queueing``), None where the engine
    #: has none: a counter of requests received, one of requests finished (the arrival
    #: rate is then finished + growth of waiting and running), one of generated tokens.
    received: str | None = None
    finished_total: str | None = None
    generated_total: str | None = None


ENGINES: Mapping[Preset, EngineSeries] = {
    Preset.VLLM: EngineSeries(
        queue=VLLM_WAITING,
        latency=VLLM_E2E_LATENCY,
        kv_cache=VLLM_KV_CACHE,
        finished=VLLM_REQUEST_SUCCESS,
        running=VLLM_RUNNING,
        finished_total=VLLM_REQUEST_SUCCESS,
        generated_total=VLLM_GENERATION_TOKENS,
    ),
    Preset.SGLANG: EngineSeries(
        queue=SGLANG_QUEUE,
        latency=SGLANG_E2E_LATENCY,
        kv_cache=SGLANG_TOKEN_USAGE,
        generated_total=SGLANG_GENERATION_TOKENS,
    ),
    Preset.TGI: EngineSeries(
        queue=TGI_QUEUE,
        latency=TGI_REQUEST_DURATION,
        received=TGI_REQUEST_COUNT,
        finished_total=TGI_GENERATED_TOKENS + "_count",
        generated_total=TGI_GENERATED_TOKENS + "_sum",
    ),
    Preset.LLAMACPP: EngineSeries(
        queue=LLAMACPP_DEFERRED,
        running=LLAMACPP_PROCESSING,
        generated=LLAMACPP_TOKENS_PREDICTED,
        generated_total=LLAMACPP_TOKENS_PREDICTED,
    ),
}


def engine_series() -> frozenset[str]:
    """Every series name the presets read (histograms as ``_bucket`` and ``_count``).

    For checks that dashboards and alert rules only use series that exist.
    """
    names: set[str] = set()
    for engine in ENGINES.values():
        names.add(engine.queue)
        if engine.latency is not None:
            names |= {engine.latency + "_bucket", engine.latency + "_count"}
        optional = (
            engine.kv_cache,
            engine.finished,
            engine.running,
            engine.generated,
            engine.received,
            engine.finished_total,
            engine.generated_total,
        )
        names |= {n for n in optional if n is not None}
    return frozenset(names)


# --------------------------------------------------------------------------- literals

_SHORT_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(char: str) -> str:
    if char in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[char]
    category = unicodedata.category(char)
    if category == "Cs":
        raise PromQLError(
            f"label value holds a lone surrogate {char!r}: Prometheus label values are UTF-8"
        )
    # Control characters, and U+FFFD which Prometheus' lexer mistakes for invalid UTF-8.
    if category == "Cc" or char == "\ufffd":
        return f"\\u{ord(char):04x}"
    return char


def quote(value: str) -> str:
    """``value`` as a double-quoted PromQL string literal that reads back as ``value``.

    Only escapes that PromQL (Go) and JSON share are used, so ``json.loads`` of the
    result is ``value`` too.
    """
    return '"' + "".join(_escape_char(c) for c in value) + '"'


def matchers(labels: Mapping[str, str]) -> str:
    """``{a="x",b="y"}``: exact-match matchers sorted by label name; empty for no labels."""
    if not labels:
        return ""
    for name in labels:
        if not LABEL_NAME.match(name):
            raise PromQLError(
                f"{name!r} is not a Prometheus label name: use letters, digits and '_'"
            )
        if name == "__name__":
            raise PromQLError(
                "load.selector cannot match __name__: the preset picks the metric; "
                "write a signal query to read another metric"
            )
    return "{" + ",".join(f"{name}={quote(labels[name])}" for name in sorted(labels)) + "}"


def series(metric: str, selector: Mapping[str, str], **fixed: str) -> str:
    """A vector selector: ``metric`` with the selector's matchers; ``fixed`` ones win."""
    if not METRIC_NAME.match(metric):
        raise PromQLError(f"{metric!r} is not a Prometheus metric name")
    return metric + matchers({**selector, **fixed})


def _window(window: str) -> str:
    if not RANGE.match(window):
        raise PromQLError(f"{window!r} is not a PromQL range: write e.g. 30s, 2m or 1h")
    return window


# --------------------------------------------------------------------------- building blocks


def quantile_over(histogram: str, selector: Mapping[str, str], quantile: float, window: str) -> str:
    """The ``quantile`` of a histogram over all matching replicas; 0 while no request ends.

    NaN (no request in the window) becomes 0 only when the histogram's series exist;
    without them the result is empty, which the reader reports as no data.  Like any
    latency histogram it sees finished requests only: an engine where nothing
    finishes for a whole window reads 0 here, and its queue signal shows the load.
    """
    if not 0.0 <= quantile <= 1.0:
        raise PromQLError(f"quantile must be within [0, 1], got {quantile}")
    w = _window(window)
    buckets = series(histogram + "_bucket", selector)
    requests = f"sum(rate({series(histogram + '_count', selector)}[{w}]))"
    value = f"histogram_quantile({quantile:g}, sum by (le) (rate({buckets}[{w}])))"
    return f"({value} and on() ({requests} > 0)) or on() ({requests} == 0)"


def ratio_of_reason(counter: str, selector: Mapping[str, str], reason: str, window: str) -> str:
    """Share of finished requests whose ``finished_reason`` is ``reason``; 0 while idle.

    Empty (no data) when the counter has no series at all.
    """
    w = _window(window)
    total = f"sum(rate({series(counter, selector)}[{w}]))"
    part = (
        f"(sum(rate({series(counter, selector, finished_reason=reason)}[{w}])) or on() vector(0))"
    )
    return f"({part} / ({total} > 0)) or on() ({total} == 0)"


# --------------------------------------------------------------------------- presets


def preset_query(
    preset: Preset, signal: str, selector: Mapping[str, str], *, window: str = DEFAULT_WINDOW
) -> str:
    """The query of the preset's signal ``signal`` (see ``api.PRESET_SIGNALS``)."""
    engine = ENGINES.get(preset)
    if engine is None or signal not in PRESET_SIGNALS[preset]:
        offered = ", ".join(PRESET_SIGNALS.get(preset, ())) or "none"
        raise PromQLError(
            f"preset {preset.value!r} has no signal {signal!r} (it offers: {offered}): "
            "give the signal a query"
        )
    if signal == "queue":
        return f"sum({series(engine.queue, selector)})"
    if signal == "kvCache" and engine.kv_cache is not None:
        return f"max({series(engine.kv_cache, selector)})"
    if signal == "latencyP95" and engine.latency is not None:
        return quantile_over(engine.latency, selector, LATENCY_QUANTILE, window)
    if signal == "running" and engine.running is not None:
        return f"sum({series(engine.running, selector)})"
    if signal == "tokensPerSecond" and engine.generated is not None:
        return f"sum(rate({series(engine.generated, selector)}[{_window(window)}]))"
    raise PromQLError(f"preset {preset.value!r} lists {signal!r} but has no query for it")


def truncation_query(
    preset: Preset, selector: Mapping[str, str], *, window: str = DEFAULT_WINDOW
) -> str | None:
    """Share of requests stopped by the token budget, for presets whose engine reports it."""
    engine = ENGINES.get(preset)
    if engine is None or engine.finished is None:
        return None
    return ratio_of_reason(engine.finished, selector, FINISHED_BY_LENGTH, window)


# --------------------------------------------------------------------------- the queueing model


def arrival_rate_query(
    preset: Preset, selector: Mapping[str, str], *, window: str = DEFAULT_WINDOW
) -> str | None:
    """Requests arriving per second, for the engines that let it be computed; else None.

    A counter of requests received gives it directly (TGI). Otherwise the requests
    finished in the window plus the growth of those waiting (and running, where the
    engine exports it) is what arrived (vLLM). One series or nothing, like every
    preset query: a replica set is summed; a negative reading (a counter reset, the
    edges of ``delta``) is read as 0 by the client.
    """
    engine = ENGINES.get(preset)
    if engine is None:
        return None
    w = _window(window)
    if engine.received is not None:
        return f"sum(rate({series(engine.received, selector)}[{w}]))"
    if engine.finished_total is None:
        return None
    seconds = f"{_seconds(w):g}"
    growth = [f"sum(delta({series(engine.queue, selector)}[{w}]))"]
    if engine.running is not None:
        growth.append(f"sum(delta({series(engine.running, selector)}[{w}]))")
    finished = f"sum(rate({series(engine.finished_total, selector)}[{w}]))"
    return f"{finished} + ({' + '.join(growth)}) / {seconds}"


def throughput_query(
    preset: Preset, selector: Mapping[str, str], *, window: str = DEFAULT_WINDOW
) -> str | None:
    """Tokens generated per second, summed over replicas; None without such a counter."""
    engine = ENGINES.get(preset)
    if engine is None or engine.generated_total is None:
        return None
    return f"sum(rate({series(engine.generated_total, selector)}[{_window(window)}]))"


def served_tokens_query(
    preset: Preset, selector: Mapping[str, str], *, window: str = DEFAULT_WINDOW
) -> str | None:
    """Mean tokens generated per finished request; empty (no data) while nothing finishes."""
    engine = ENGINES.get(preset)
    if engine is None or engine.generated_total is None or engine.finished_total is None:
        return None
    w = _window(window)
    tokens = f"sum(rate({series(engine.generated_total, selector)}[{w}]))"
    finished = f"sum(rate({series(engine.finished_total, selector)}[{w}]))"
    return f"{tokens} / ({finished} > 0)"


_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def _seconds(window: str) -> float:
    """A PromQL range such as ``1h30m`` in seconds."""
    return sum(float(n) * _UNITS[u] for n, u in re.findall(r"([0-9]+)(ms|s|m|h|d|w|y)", window))


# --------------------------------------------------------------------------- the plan


class Role(StrEnum):
    """What a query's value is used for."""

    SIGNAL = "signal"
    QUALITY = "quality"
    TRUNCATION = "truncation"
    #: The queueing model's inputs (planned with ``control.model: queueing`` only).
    ARRIVAL_RATE = "arrivalRate"
    THROUGHPUT = "throughput"
    SERVED_TOKENS = "servedTokens"


@dataclass(frozen=True)
class Query:
    """One query of a tick."""

    role: Role
    #: The signal name; ``quality`` and ``truncation`` for the other roles.
    name: str
    expr: str
    #: The signal's target (pressure 1); None for the other roles.
    target: float | None = None


def plan(spec: StopPolicySpec, *, window: str = DEFAULT_WINDOW) -> tuple[Query, ...]:
    """The queries one tick of ``spec`` runs: its signals, quality.query, the preset's truncation.

    Raises :class:`PromQLError` when a preset query cannot be built (a signal the
    preset does not offer, a selector matching ``__name__``); the API rules
    reject most of these before the operator sees them.
    """
    load = spec.load
    out: list[Query] = []
    for signal in load.signals:
        expr = (
            signal.query
            if signal.query is not None
            else preset_query(load.preset, signal.name, load.selector, window=window)
        )
        out.append(Query(Role.SIGNAL, signal.name, expr, signal.target))
    if spec.quality.query is not None:
        out.append(Query(Role.QUALITY, "quality", spec.quality.query))
    truncation = truncation_query(load.preset, load.selector, window=window)
    if truncation is not None:
        out.append(Query(Role.TRUNCATION, "truncation", truncation))
    if spec.control.model is LoadModel.QUEUEING:
        for role, build in (
            (Role.ARRIVAL_RATE, arrival_rate_query),
            (Role.THROUGHPUT, throughput_query),
            (Role.SERVED_TOKENS, served_tokens_query),
        ):
            model_expr = build(load.preset, load.selector, window=window)
            if model_expr is not None:
                out.append(Query(role, role.value, model_expr))
    return tuple(out)
