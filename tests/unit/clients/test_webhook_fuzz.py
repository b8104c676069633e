"""The Alertmanager webhook under hostile and heavy input (issue 15): a seeded fuzz of
10,000+ requests over loopback against the webhook served as the operator serves it.

The mix: valid notifications (plain, gzip, deflate; times at the ends of the calendar;
statuses firing and resolved), groups with bad alerts among good ones, a wrong type in
every field of the version-4 payload, corrupt and unsupported encodings and
decompression bombs, malformed bodies, payloads at and over the 1 MiB body limit
(with Content-Length and chunked), wrong tokens, methods and paths.  Sent by a bounded
number of concurrent clients while the receiver processes what it accepted.

Asserted: every answer is one of the codes its request allows, never a 5xx; no answer
takes 1 s or more (on loopback; generous on purpose: the loop must keep answering while
payloads at the limit are parsed and planned); every alert of a 202 reaches the
operator's callback, or is counted as unmatched or invalid, none lost.  The counts by
code and the worst latency are printed (``pytest -s``) and in every failure message.
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import io
import json
import random
import statistics
import threading
import time
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from stopbudget.clients.metrics import OperatorMetrics
from stopbudget.clients.webhook import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_PATH,
    RECEIVER,
    create_app,
)
from stopbudget.core.audits.alerts import PolicyAlerts
from tests.unit.clients.test_webhook import TOKEN, Served, threaded_server
from tests.unit.core.audits.test_alerts import EDGES_OF_UTC, OUT_OF_UTC, TARGETS

SEED = 15
REQUESTS = 10_000
CONCURRENCY = 8
SLOW = 1.0
LIMIT = DEFAULT_MAX_BODY_BYTES

AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = {"Content-Type": "application/json"}
ACCEPTED = frozenset({202})
CLIENT_ERROR = frozenset({400})
BODY_PROBLEM = frozenset({400, 413, 415})

#: Labels that select each of the test policies, or none.
SELECTING = {
    ("serving", "llama"): {"alertname": "EMLow", "stoppolicy": "llama", "namespace": "serving"},
    ("serving", "mistral"): {"alertname": "Slow", "model": "mistral", "team": "ml"},
    ("serving", "bare"): {"alertname": "Bare", "stoppolicy": "bare", "namespace": "serving"},
    None: {"alertname": "Other", "instance": "host"},
}
#: Values of every JSON type, for "a wrong type in every field".
WRONG = [None, True, 0, -1, 1.5, 10**30, "", "x", "y" * 5000, [], [1], {}, {"a": 1}, {"a": None}]


@dataclass
class Case:
    kind: str
    expect: frozenset[int]
    method: str = "POST"
    path: str = DEFAULT_PATH
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    chunked: bool = False
    #: (policy, fingerprint) of every alert that must reach the callback after a 202.
    delivered: frozenset[tuple[tuple[str, str], str]] = frozenset()
    #: Alerts the 202 must say it accepted and rejected (None: not known in advance).
    accepted: int | None = None
    rejected: int | None = None
    #: The field given a wrong type (``alerts[].labels``), for "wrong type" cases.
    mutated: str = ""


# --------------------------------------------------------------------------- the cases


def a_time(rng: random.Random) -> str:
    """A valid RFC 3339 time: now-ish, at the ends of the calendar, or anywhere in range."""
    pick = rng.random()
    if pick < 0.2:
        return rng.choice(EDGES_OF_UTC)[0]
    if pick < 0.4:
        offset = timedelta(minutes=rng.randint(-23 * 60 - 59, 23 * 60 + 59))
        base = datetime(rng.randint(2, 9998), rng.randint(1, 12), rng.randint(1, 28), tzinfo=UTC)
        return base.astimezone(timezone(offset)).isoformat()
    moment = datetime(2024, 5, 1, tzinfo=UTC) + timedelta(seconds=rng.randint(0, 10**7))
    text = moment.isoformat().replace("+00:00", "Z")
    return text[:-1] + ".739266876Z" if rng.random() < 0.3 else text


def an_alert(rng: random.Random, fingerprint: str) -> tuple[dict[str, Any], tuple[str, str] | None]:
    policy = rng.choice(list(SELECTING))
    status = rng.choice(["firing", "firing", "resolved"])
    doc: dict[str, Any] = {
        "status": status,
        "labels": {**SELECTING[policy], "severity": rng.choice(["page", "ticket"])},
        "annotations": {"summary": "fuzz"},
        "startsAt": a_time(rng),
        "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else a_time(rng),
        "generatorURL": "http://prometheus:9090/graph",
        "fingerprint": fingerprint,
    }
    return doc, policy


def a_payload(alerts: list[dict[str, Any]], rng: random.Random) -> dict[str, Any]:
    return {
        "version": "4",
        "groupKey": f'{{}}:{{alertname="{rng.choice(["EMLow", "Slow"])}"}}',
        "status": rng.choice(["firing", "resolved"]),
        "receiver": "stopbudget",
        "groupLabels": {"alertname": "EMLow"},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "truncatedAlerts": rng.choice([0, 0, 0, 3]),
        "alerts": alerts,
    }


def encode(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def compressed(body: bytes, rng: random.Random) -> tuple[bytes, str]:
    coding = rng.choice(["", "gzip", "x-gzip", "deflate", "gzip, gzip"])
    if coding in ("gzip", "x-gzip"):
        return gzip.compress(body, mtime=0), coding
    if coding == "deflate":
        return zlib.compress(body), coding
    if coding == "gzip, gzip":
        return gzip.compress(gzip.compress(body, mtime=0), mtime=0), coding
    return body, coding


def valid(rng: random.Random, n: int, size: int | None = None, prefix: str = "v") -> Case:
    """A notification valid by construction, compressed or not; or, with ``size``, one of
    plain JSON as close to ``size`` bytes as its alerts allow."""
    docs, delivered = [], set()
    room = (size or 0) - 1000
    while len(docs) < (rng.randint(1, 6) if size is None else len(docs) + 1):
        doc, policy = an_alert(rng, f"{prefix}{n}-{len(docs)}")
        if size is not None:
            room -= len(encode(doc)) + 1
            if room < 0:
                break
        docs.append(doc)
        if policy is not None:
            delivered.add((policy, doc["fingerprint"]))
    count = len(docs)
    body = encode(a_payload(docs, rng))
    coding = ""
    if size is None:
        body, coding = compressed(body, rng)
    headers = {**AUTH, **JSON, **({"Content-Encoding": coding} if coding else {})}
    return Case(
        "valid",
        ACCEPTED,
        headers=headers,
        body=body,
        delivered=frozenset(delivered),
        accepted=count,
        rejected=0,
    )


def invalid_for(key: str, value: Any) -> bool:
    """Whether ``value`` makes an alert invalid in field ``key`` (some wrong types do not:
    ``{}`` is a valid label set, ``"x"`` a valid fingerprint)."""
    if key in ("labels", "annotations"):
        return value != {}
    if key == "fingerprint":
        return not (isinstance(value, str) and 1 <= len(value) <= 128)
    return True


def broken_alert(rng: random.Random, fingerprint: str) -> dict[str, Any]:
    doc, _ = an_alert(rng, fingerprint)
    trouble = rng.choice(["time", "field", "not an object", "missing"])
    if trouble == "time":
        doc[rng.choice(["startsAt", "endsAt"])] = rng.choice(OUT_OF_UTC)
    elif trouble == "field":
        key = rng.choice(["status", "labels", "annotations", "startsAt", "fingerprint"])
        doc[key] = rng.choice([v for v in WRONG if invalid_for(key, v)])
        if key in ("labels", "annotations") and rng.random() < 0.5:
            doc[key] = {"k": rng.choice([None, 3, 1.5, [], {}])}
    elif trouble == "missing":
        del doc[rng.choice(["status", "labels", "startsAt", "fingerprint"])]
    else:
        return rng.choice(WRONG)  # type: ignore[no-any-return]
    return doc


def mixed(rng: random.Random, n: int) -> Case:
    """Good alerts with bad ones among them: the good ones must all get through."""
    good = valid(rng, n)
    doc = json.loads(decoded(good))
    bad = [broken_alert(rng, f"x{n}-{i}") for i in range(rng.randint(1, 3))]
    for alert in bad:
        doc["alerts"].insert(rng.randint(0, len(doc["alerts"])), alert)
    return Case(
        "mixed",
        ACCEPTED,
        headers={**AUTH, **JSON},
        body=encode(doc),
        delivered=good.delivered,
        accepted=good.accepted,
        rejected=len(bad),
    )


def decoded(case: Case) -> bytes:
    assert case.body is not None
    coding = case.headers.get("Content-Encoding", "")
    body = case.body
    for _ in coding.split(",") if coding else []:
        body = zlib.decompress(body, wbits=47)
    return body


def paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            found += paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            found += paths(v, (*prefix, i))
    return found


def wrong_type(rng: random.Random, n: int) -> Case:
    """A valid payload with one field, at any depth, given a value of another type."""
    docs = [an_alert(rng, f"w{n}-{i}")[0] for i in range(rng.randint(1, 4))]
    doc = a_payload(docs, rng)
    path = rng.choice(paths(doc))
    node: Any = doc
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = rng.choice(WRONG)
    return Case(
        "wrong type",
        frozenset({202, 400}),
        headers={**AUTH, **JSON},
        body=encode(doc),
        mutated=field_name(path),
    )


def field_name(path: tuple[Any, ...]) -> str:
    return ".".join("[]" if isinstance(p, int) else str(p) for p in path).replace(".[]", "[]")


@functools.cache
def bombs() -> tuple[bytes, bytes]:
    """Small bodies that decode to more than the limit: gzip, and deflate."""
    return gzip.compress(b"[" * (2 * LIMIT), mtime=0), zlib.compress(b" " * (LIMIT + 1))


def corrupt_encoding(rng: random.Random, n: int) -> Case:
    plain = encode(a_payload([an_alert(rng, f"c{n}")[0]], rng))
    noise = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 300)))
    choices: list[Callable[[], tuple[str, bytes]]] = [
        lambda: ("gzip", plain),
        lambda: ("deflate", plain),
        lambda: ("gzip", gzip.compress(plain, mtime=0)[: rng.randint(0, 60)]),
        lambda: ("deflate", zlib.compress(plain)[: -rng.randint(1, 20)]),
        lambda: ("gzip", noise),
        lambda: ("deflate", noise),
        lambda: ("gzip", b"\x1f\x8b" + noise),
        lambda: ("br", plain),
        lambda: ("zstd", plain),
        lambda: ("compress", plain),
        lambda: ("gzip, br", plain),
        lambda: ("gzip, gzip, gzip", plain),
        lambda: ("gzip", bombs()[0]),
        lambda: ("deflate", bombs()[1]),
    ]
    coding, body = rng.choice(choices)()
    headers = {**AUTH, **JSON, "Content-Encoding": coding}
    return Case("corrupt encoding", BODY_PROBLEM, headers=headers, body=body)


def malformed(rng: random.Random, n: int) -> Case:
    plain = encode(a_payload([an_alert(rng, f"j{n}")[0]], rng))
    choices: list[Callable[[], bytes]] = [
        lambda: plain[: rng.randint(0, len(plain) - 1)],
        lambda: plain.replace(b'"', b"'", 1),
        lambda: b"\xff\xfe" + plain,
        lambda: bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 500))),
        lambda: b"[" * 50_000,
        lambda: encode(rng.choice(WRONG)),
        lambda: encode({**json.loads(plain), "version": rng.choice(["3", 4, None, "40"])}),
    ]
    body = rng.choice(choices)()
    return Case("malformed", CLIENT_ERROR, headers={**AUTH, **JSON}, body=body)


def unauthorized(rng: random.Random, n: int) -> Case:
    auth = rng.choice(
        [
            {},
            {"Authorization": f"Bearer {TOKEN}x"},
            {"Authorization": f"Bearer {TOKEN[:-1]}"},
            {"Authorization": f"Basic {TOKEN}"},
            {"Authorization": TOKEN},
            {"Authorization": "Bearer "},
            {"Authorization": "Bearer " + "z" * 2000},
        ]
    )
    body = encode(a_payload([an_alert(rng, f"t{n}")[0]], rng))
    return Case("unauthorized", frozenset({401}), headers={**auth, **JSON}, body=body)


def elsewhere(rng: random.Random, n: int) -> Case:
    if rng.random() < 0.7:
        method = rng.choice(["GET", "PUT", "DELETE", "PATCH", "OPTIONS"])
        return Case("wrong method", frozenset({405}), method=method, headers=dict(AUTH))
    path = rng.choice(["/", "/alertmanager/x", "/metrics", "/api/v2/alerts"])
    return Case("wrong path", frozenset({404, 405}), path=path, headers=dict(AUTH), body=b"{}")


def near_limit(rng: random.Random, n: int) -> Case:
    """Payloads at and over the body limit: valid ones of ~4,000 alerts, over by
    Content-Length, over when read (chunked), and malformed at the very end."""
    kind = n % 4
    if kind in (0, 1):
        case = valid(rng, n, size=LIMIT - rng.randint(0, LIMIT // 10), prefix="n")
        assert case.body is not None
        assert LIMIT * 0.85 < len(case.body) <= LIMIT, len(case.body)
        return Case(
            "at the limit",
            ACCEPTED,
            headers=case.headers,
            body=case.body,
            delivered=case.delivered,
            accepted=case.accepted,
            rejected=0,
        )
    padding = encode({"version": "4", "pad": "x" * (LIMIT + rng.randint(1, 50_000))})
    if kind == 2:
        return Case(
            "over the limit",
            frozenset({413}),
            headers={**AUTH, **JSON},
            body=padding,
            chunked=rng.random() < 0.5,
        )
    case = valid(rng, n, size=LIMIT - rng.randint(0, LIMIT // 10), prefix="m")
    assert case.body is not None
    body = case.body[: -rng.randint(1, 100)]
    return Case("at the limit, malformed", CLIENT_ERROR, headers={**AUTH, **JSON}, body=body)


MIX = [
    (valid, 30),
    (mixed, 12),
    (wrong_type, 25),
    (corrupt_encoding, 10),
    (malformed, 10),
    (unauthorized, 8),
    (elsewhere, 5),
]


def cases(seed: int = SEED, n: int = REQUESTS) -> list[Case]:
    """``n`` requests from ``seed``: one in 400 at or over the body limit, spread out."""
    rng = random.Random(seed)
    kinds = [make for make, weight in MIX for _ in range(weight)]
    near = max(4, n // 400)
    built = [rng.choice(kinds)(rng, i) for i in range(n - near)]
    for i in range(near):
        built.insert(rng.randint(0, len(built)), near_limit(rng, i))
    return built


@functools.cache
def the_cases() -> tuple[Case, ...]:
    return tuple(cases())


# --------------------------------------------------------------------------- the run


@dataclass
class Answer:
    case: Case
    status: int | None
    seconds: float
    body: Any = None
    error: str = ""


async def chunks(body: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(body), 64 * 1024):
        yield body[start : start + 64 * 1024]


async def send(session: aiohttp.ClientSession, base: str, case: Case) -> Answer:
    data: Any = case.body
    if case.chunked and case.body:
        data = chunks(case.body)
    elif case.body and len(case.body) > 64 * 1024:
        data = io.BytesIO(case.body)  # aiohttp warns about big bytes bodies
    started = time.perf_counter()
    try:
        async with session.request(
            case.method, base + case.path, data=data, headers=case.headers
        ) as response:
            raw = await response.read()
        seconds = time.perf_counter() - started
    except aiohttp.ClientError as exc:
        return Answer(case, None, time.perf_counter() - started, error=repr(exc))
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = raw[:200]
    return Answer(case, response.status, seconds, body)


@dataclass
class Fuzzed:
    """The webhook with the operator's defaults, served as the operator serves it."""

    served: Served
    app: web.Application
    metrics: OperatorMetrics
    #: (policy, fingerprint) of every alert the operator's callback got.
    got: list[tuple[tuple[str, str], str]]

    def alerts_by_outcome(self) -> dict[tuple[str, str], float]:
        return {
            (sample.labels["status"], sample.labels["outcome"]): sample.value
            for family in self.metrics.registry.collect()
            if family.name == "stopbudget_alertmanager_alerts"
            for sample in family.samples
            if sample.name.endswith("_total")
        }


@pytest.fixture
def webhook(tmp_path: Path) -> Iterator[Fuzzed]:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    got: list[tuple[tuple[str, str], str]] = []
    lock = threading.Lock()

    async def on_alerts(update: PolicyAlerts) -> None:
        with lock:
            got.extend((update.key, alert.fingerprint) for alert, _ in update.outcomes)

    metrics = OperatorMetrics()
    app = create_app(
        token_file=token_file, on_alerts=on_alerts, policies=lambda: TARGETS, metrics=metrics
    )
    with threaded_server(app) as served:
        yield Fuzzed(served, app, metrics, got)


def summary(answers: list[Answer], elapsed: float) -> str:
    codes = Counter(a.status for a in answers)
    kinds = Counter((a.case.kind, a.status) for a in answers)
    latencies = sorted(a.seconds for a in answers)
    worst = max(answers, key=lambda a: a.seconds)
    lines = [
        f"{len(answers)} requests in {elapsed:.1f} s (seed {SEED}, {CONCURRENCY} concurrent)",
        "by status: " + ", ".join(f"{c}: {n}" for c, n in sorted(codes.items(), key=str)),
        f"latency: median {statistics.median(latencies) * 1000:.1f} ms, "
        f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.1f} ms, "
        f"worst {worst.seconds * 1000:.1f} ms ({worst.case.kind}, {worst.status})",
        "by kind: " + ", ".join(f"{k} {c}: {n}" for (k, c), n in sorted(kinds.items(), key=str)),
    ]
    return "\n".join(lines)


@pytest.mark.slow
async def test_fuzz_10000_requests_no_5xx_no_slow_answer_no_alert_lost(webhook: Fuzzed) -> None:
    served, got = webhook.served, webhook.got
    todo = the_cases()
    assert len(todo) >= 10_000
    base = f"http://{served.address[0]}:{served.address[1]}"
    answers: list[Answer] = []
    queue: asyncio.Queue[Case] = asyncio.Queue()
    for case in todo:
        queue.put_nowait(case)

    async def client(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            answers.append(await send(session, base, queue.get_nowait()))

    started = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(client(session) for _ in range(CONCURRENCY)))
    elapsed = time.perf_counter() - started
    await asyncio.wait_for(served.run(webhook.app[RECEIVER].join()), timeout=60)
    report = summary(answers, elapsed)
    print("\n" + report)

    failed = [a for a in answers if a.status is None]
    assert not failed, f"{failed[0].case.kind}: {failed[0].error}\n{report}"
    server_errors = [a for a in answers if a.status is not None and a.status >= 500]
    assert not server_errors, f"{server_errors[0].case.kind}: {server_errors[0].body}\n{report}"
    unexpected = [a for a in answers if a.status not in a.case.expect]
    assert not unexpected, (
        f"{len(unexpected)} unexpected, e.g. {unexpected[0].case.kind} "
        f"{unexpected[0].case.headers.get('Content-Encoding')}: {unexpected[0].status} "
        f"{unexpected[0].body}\n{report}"
    )
    slow = [a for a in answers if a.seconds >= SLOW]
    assert not slow, f"{len(slow)} answers took {SLOW} s or more\n{report}"

    # What a 202 says it took, by construction where the test knows it.
    for a in answers:
        if a.case.accepted is not None:
            assert a.body["alerts"] == a.case.accepted, (a.case.kind, a.body)
            assert a.body.get("rejected", 0) == a.case.rejected, (a.case.kind, a.body)
    # No alert lost after a 202: every alert built to reach a policy reached it ...
    expected = {d for a in answers for d in a.case.delivered}
    known = {(k, f) for k, f in got if f[0] in "vn"}
    assert expected - known == set(), f"{len(expected - known)} alerts lost\n{report}"
    assert known - expected == set()
    # ... and every alert of every 202, the fuzzed ones included, was counted as
    # delivered, unmatched or invalid (each selects one policy at most): none failed.
    taken = sum(a.body["alerts"] + a.body.get("rejected", 0) for a in answers if a.status == 202)
    by_outcome = webhook.alerts_by_outcome()
    assert sum(by_outcome.values()) == taken, f"{by_outcome}\n{report}"
    assert not [k for k in by_outcome if k[1] == "error"], by_outcome
    assert len(got) == sum(
        n for (_, outcome), n in by_outcome.items() if outcome not in ("unmatched", "invalid")
    )


@pytest.mark.slow
def test_the_fuzz_is_seeded_and_covers_every_kind() -> None:
    """Same seed, same requests; every kind of request is in the mix."""
    first, again = cases(n=800), cases(n=800)
    assert [(c.kind, c.body, c.headers) for c in first] == [
        (c.kind, c.body, c.headers) for c in again
    ]
    full = the_cases()
    kinds = Counter(c.kind for c in full)
    assert set(kinds) == {
        "valid",
        "mixed",
        "wrong type",
        "corrupt encoding",
        "malformed",
        "unauthorized",
        "wrong method",
        "wrong path",
        "at the limit",
        "over the limit",
        "at the limit, malformed",
    }
    rng = random.Random(0)
    every_field = {field_name(p) for p in paths(a_payload([an_alert(rng, "f")[0]], rng))}
    assert every_field <= {c.mutated for c in full}, every_field - {c.mutated for c in full}
    codings = {c.headers.get("Content-Encoding") for c in full}
    assert {"gzip", "deflate", "br", "zstd", "gzip, gzip"} <= codings
    assert any(EDGES_OF_UTC[0][0].encode() in (c.body or b"") for c in full)
    assert any(c.chunked for c in full)
