"""The simulator's fleet as it was before restarts were charged (commit 363143e), frozen.

The instantaneous model: fixed replicas, every request brings the work and KV of the
budget it arrived with. It is ONLY an oracle: tests/unit/sim/test_sim_rollout.py replays runs of
the restart-aware simulator (with a sink read live and propagation 0) through it and
expects the same latencies. Copied from operator/stopbudget/sim/fleet.py; not to be
edited or extended.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass

INF = math.inf


@dataclass(frozen=True)
class FleetConfig:
    """Capacity of the simulated fleet."""

    replicas: int = 3
    #: Sequences decoded together per replica (vLLM's --max-num-seqs).
    max_batch: int = 96
    #: Duration of one decode step with a batch of one, in seconds.
    step_base_s: float = 0.015
    #: Added to a decode step per sequence in the batch, in seconds.
    step_per_seq_s: float = 0.00025
    #: KV-cache capacity of one replica, in tokens.
    kv_tokens: int = 250_000
    #: Decode steps one prompt token costs (prefill is cheaper than decode per token).
    prefill_weight: float = 0.05
    #: Window of the latency quantiles and the live EM the fleet exports, in seconds
    #: (the presets' PromQL rate window, ``promql.DEFAULT_WINDOW``).
    window_s: float = 120.0

    def __post_init__(self) -> None:
        if self.replicas < 1 or self.max_batch < 1 or self.kv_tokens < 1:
            raise ValueError("replicas, max_batch and kv_tokens must be at least 1")
        if self.step_base_s <= 0 or self.step_per_seq_s < 0 or self.prefill_weight < 0:
            raise ValueError("step_base_s must be > 0; step_per_seq_s, prefill_weight >= 0")
        if self.window_s <= 0:
            raise ValueError("window_s must be > 0")

    def rate(self, n: int) -> float:
        """Tokens per second of each sequence in a batch of ``n``."""
        return 1.0 / (self.step_base_s + self.step_per_seq_s * n)

    @property
    def replica_throughput(self) -> float:
        """Tokens (work units) per second of one replica at a full batch."""
        return self.max_batch * self.rate(self.max_batch)

    @property
    def capacity(self) -> float:
        """Work units per second of the fleet with every batch full."""
        return self.replicas * self.replica_throughput


@dataclass(frozen=True)
class FleetSignals:
    """What the fleet exports at one instant, as a Prometheus scrape would see it."""

    #: Requests waiting for a slot (vllm:num_requests_waiting summed over the fleet).
    queue: int
    #: Sequences being decoded (vllm:num_requests_running summed).
    running: int
    #: Highest KV-cache usage of the replicas, in [0, 1] (max of vllm:kv_cache_usage_perc,
    #: as the vllm preset queries it).
    kv_cache: float
    #: End-to-end latency quantiles of the requests finished within the window (0 if none).
    latency_p95: float
    latency_p99: float
    #: Requests arrived and completed so far.
    arrived: int
    completed: int


class _Replica:
    __slots__ = ("heap", "kv", "n", "next_done", "t", "v")

    def __init__(self) -> None:
        self.n = 0
        self.v = 0.0  # virtual time: tokens emitted per sequence so far
        self.t = 0.0  # when v was last brought up to date
        self.kv = 0
        self.heap: list[tuple[float, int, int]] = []  # (virtual finish, request, kv reserved)
        self.next_done = INF


class Fleet:
    """The fleet's state, advanced by :meth:`run` from one instant to the next.

    Requests are numbered by the caller (0, 1, ...); :attr:`done` holds each
    one's completion time (NaN until it completes) and :attr:`log` the
    completed requests in completion order.
    """

    def __init__(self, config: FleetConfig, requests: int) -> None:
        self.config = config
        self.now = 0.0
        self.arrived = 0
        self.completed = 0
        self.max_queue = 0
        self.done = [math.nan] * requests
        self.arrival = [math.nan] * requests
        #: Completed requests, in completion order, and their completion times.
        self.log: list[int] = []
        self.log_time: list[float] = []
        self._replicas = [_Replica() for _ in range(config.replicas)]
        self._queue: deque[tuple[int, float, int]] = deque()  # (request, work, kv)

    # ------------------------------------------------------------------ events

    def _advance(self, r: _Replica, t: float) -> None:
        if r.n:
            r.v += (t - r.t) * self.config.rate(r.n)
        r.t = t

    def _schedule(self, r: _Replica) -> None:
        if r.n:
            r.next_done = r.t + max(r.heap[0][0] - r.v, 0.0) / self.config.rate(r.n)
        else:
            r.next_done = INF

    def _fits(self, r: _Replica, kv: int) -> bool:
        return r.n == 0 or (r.n < self.config.max_batch and r.kv + kv <= self.config.kv_tokens)

    def _place(self, kv: int) -> _Replica | None:
        best = None
        for r in self._replicas:
            if self._fits(r, kv) and (best is None or r.n < best.n):
                best = r
        return best

    def _start(self, r: _Replica, t: float, request: int, work: float, kv: int) -> None:
        self._advance(r, t)
        heapq.heappush(r.heap, (r.v + work, request, kv))
        r.n += 1
        r.kv += kv
        self._schedule(r)

    def _admit(self, t: float) -> None:
        queue = self._queue
        while queue:
            request, work, kv = queue[0]
            r = self._place(kv)
            if r is None:
                return
            queue.popleft()
            self._start(r, t, request, work, kv)

    def _finish(self, r: _Replica, t: float) -> None:
        self._advance(r, t)
        finish, request, kv = heapq.heappop(r.heap)
        r.v = max(r.v, finish)
        r.n -= 1
        r.kv -= kv
        self._schedule(r)
        self.done[request] = t
        self.log.append(request)
        self.log_time.append(t)
        self.completed += 1
        self._admit(t)

    def _next(self) -> tuple[float, _Replica | None]:
        best: _Replica | None = None
        when = INF
        for r in self._replicas:
            if r.next_done < when:
                when, best = r.next_done, r
        return when, best

    def run(
        self,
        until: float,
        arrivals: list[tuple[float, int, float, int]],
    ) -> None:
        """Process every event up to ``until``: ``arrivals`` are ``(time, request, work,
        kv tokens)`` with ``now <= time < until``, in time order."""
        i, count = 0, len(arrivals)
        queue = self._queue
        while True:
            done_at, replica = self._next()
            arrive_at = arrivals[i][0] if i < count else INF
            if arrive_at <= done_at:
                if arrive_at >= until:
                    break
                t, request, work, kv = arrivals[i]
                i += 1
                self.arrived += 1
                self.arrival[request] = t
                target = None if queue else self._place(kv)
                if target is None:
                    queue.append((request, work, kv))
                    self.max_queue = max(self.max_queue, len(queue))
                else:
                    self._start(target, t, request, work, kv)
            else:
                if done_at > until or replica is None:
                    break
                self._finish(replica, done_at)
        if i < count:
            raise ValueError(f"arrival at {arrivals[i][0]} is not before {until}")
        self.now = max(self.now, until)

    def drain(self) -> None:
        """Serve everything still queued or running, with no more arrivals."""
        while True:
            done_at, replica = self._next()
            if replica is None:
                break
            self._finish(replica, done_at)
        self.now = max(self.now, self.log_time[-1] if self.log_time else self.now)

    # ------------------------------------------------------------------ state

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> int:
        return sum(r.n for r in self._replicas)

    def window(self, now: float, seconds: float) -> tuple[int, int]:
        """Indices ``[lo, hi)`` of :attr:`log` completed within ``(now - seconds, now]``."""
        return bisect_right(self.log_time, now - seconds), len(self.log_time)

    def signals(self, now: float) -> FleetSignals:
        lo, hi = self.window(now, self.config.window_s)
        latencies = sorted(self.done[q] - self.arrival[q] for q in self.log[lo:hi])
        kv = max(min(r.kv / self.config.kv_tokens, 1.0) for r in self._replicas)
        return FleetSignals(
            queue=len(self._queue),
            running=self.running,
            kv_cache=kv,
            latency_p95=quantile(latencies, 0.95),
            latency_p99=quantile(latencies, 0.99),
            arrived=self.arrived,
            completed=self.completed,
        )


def quantile(ordered: list[float], q: float) -> float:
    """Nearest-rank quantile of a sorted list; 0 when empty."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]
