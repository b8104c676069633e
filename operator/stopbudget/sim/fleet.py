"""A serving fleet with continuous batching, in simulated time. PURE: no I/O, no clock.

The model, per replica (one vLLM-like server):

* up to ``max_batch`` sequences are decoded together; one decode step emits
  one token for every sequence in the batch and takes
  ``step_base_s + step_per_seq_s * n`` seconds with ``n`` sequences, so a
  sequence advances at ``1 / (step_base_s + step_per_seq_s * n)`` tokens/s and
  the replica's throughput grows with the batch and saturates (the shape of
  continuous batching on one GPU);
* a request's *work* is its generated tokens plus ``prefill_weight`` decode
  steps per prompt token (prefill is batched and much cheaper per token than
  decode), all of it processed at the sequence's decode rate;
* a request holds ``context + generated`` tokens of KV cache, reserved in full
  at admission (vLLM allocates blocks while decoding and preempts when they
  run out; reserving up front never preempts and reports the same usage once
  the batch is in steady state);
* one FIFO queue in front of the fleet (a gateway): a request starts on the
  replica with the fewest sequences that has a free slot and room in its KV
  cache; otherwise it waits.  No request overtakes the head of the queue.

Where the budget lives decides how a change reaches the requests.  Without a
:class:`Rollout` (a sink read live: the gate's ConfigMap, an AI gateway, an
annotation) the replicas are fixed and every request arrives with its budget's
work and KV.  With one (a sink in the pod template: ``arg``, ``env``) each replica
serves the budget of its template, and :meth:`Fleet.set_template` rolls the
replicas as a Deployment does (:mod:`stopbudget.sim.rollout`): new replicas take
``restart_s`` to start, a replaced replica takes no new request and stops when its
last one finishes, and a request is priced when it starts, at its replica's budget.

Because every sequence of a replica advances at the same rate, the replica
keeps one *virtual clock* (tokens emitted per sequence so far) and a heap of
the virtual times at which its sequences finish: each event costs O(log n).
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_right
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from stopbudget.sim import rollout as rolling

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
    __slots__ = (
        "heap",
        "id",
        "kv",
        "n",
        "next_done",
        "ready_at",
        "stop_at",
        "stop_order",
        "t",
        "template",
        "v",
    )

    def __init__(self, id: int = 0, template: int = -1, ready_at: float = 0.0) -> None:
        self.id = id
        #: Budget of its pod template (-1: requests bring their own budget).
        self.template = template
        #: When it is ready (takes requests) and when it started draining (INF: not yet).
        self.ready_at = ready_at
        self.stop_at = INF
        #: The fleet's count of starts and stops when it started draining (orders
        #: events at the same instant).
        self.stop_order = -1
        self.n = 0
        self.v = 0.0  # virtual time: tokens emitted per sequence so far
        self.t = 0.0  # when v was last brought up to date
        self.kv = 0
        self.heap: list[tuple[float, int, int]] = []  # (virtual finish, request, kv reserved)
        self.next_done = INF


@dataclass(frozen=True)
class Rollout:
    """How a budget written to the pod template (sink ``env`` or ``arg``) reaches the
    replicas: a rolling update (:mod:`stopbudget.sim.rollout`) with these parameters."""

    #: From a pod's creation to it taking requests (image pull, model load), seconds.
    restart_s: float = 120.0
    #: Resolved to pods (:func:`stopbudget.sim.rollout.counts`).
    max_surge: int = 1
    max_unavailable: int = 0

    def __post_init__(self) -> None:
        if not (self.restart_s >= 0 and math.isfinite(self.restart_s)):
            raise ValueError(f"restart_s must be >= 0 and finite, got {self.restart_s}")
        if self.max_surge < 0 or self.max_unavailable < 0:
            raise ValueError("max_surge and max_unavailable must be >= 0")
        if self.max_surge == 0 and self.max_unavailable == 0:
            raise ValueError("max_surge and max_unavailable cannot both be 0")


#: Cost of a request at a budget: (work units, KV-cache tokens).
Cost = Callable[[int, int], tuple[float, int]]


class Fleet:
    """The fleet's state, advanced by :meth:`run` from one instant to the next.

    Requests are numbered by the caller (0, 1, ...); :attr:`done` holds each
    one's completion time (NaN until it completes) and :attr:`log` the
    completed requests in completion order.

    Without ``rollout`` the replicas are fixed and every request brings its own work
    and KV tokens (its budget was set when it arrived).  With ``rollout`` the budget
    lives in the pod template: each replica serves the budget of its template, a
    request is priced by ``cost(request, budget)`` when it starts on a replica (the
    work and KV of :meth:`run`'s arrivals are ignored), and :meth:`set_template` rolls
    the replicas toward a new one.  :attr:`budget_of` holds each request's budget,
    :attr:`rollouts` the rollouts started and :attr:`lost_s` the replica-seconds with
    fewer than ``replicas`` replicas taking requests.
    """

    def __init__(
        self,
        config: FleetConfig,
        requests: int,
        rollout: Rollout | None = None,
        cost: Cost | None = None,
        template: int = -1,
    ) -> None:
        if rollout is not None and (cost is None or template < 0):
            raise ValueError("a fleet with a rollout needs the cost of a request and a template")
        self.config = config
        self.rollout = rollout
        self._cost = cost
        self.now = 0.0
        self.arrived = 0
        self.completed = 0
        self.max_queue = 0
        self.done = [math.nan] * requests
        self.arrival = [math.nan] * requests
        self.started = [math.nan] * requests
        #: The fleet's count of starts and stops when each request started.
        self.start_order = [-1] * requests
        self._order = 0
        #: The replica (its id) that served each request, and the budget it was served at
        #: (-1 without a rollout: the budget it arrived with).
        self.replica_of = [-1] * requests
        self.budget_of = [-1] * requests
        #: Completed requests, in completion order, and their completion times.
        self.log: list[int] = []
        self.log_time: list[float] = []
        self._replicas = [_Replica(i, template) for i in range(config.replicas)]
        #: Replicas taking requests (ready, not draining), in creation order.
        self._serving = list(self._replicas)
        #: Every replica ever created (for the record): id -> replica, and when it went.
        self.pods = {r.id: r for r in self._replicas}
        self.gone: dict[int, float] = {}
        self._queue: deque[tuple[int, float, int]] = deque()  # (request, work, kv)
        self.newest = template
        self.rollouts = 0
        self.lost_s = 0.0
        self._lost_t = 0.0
        #: (time, replicas taking requests) at every change.
        self.serving_log: list[tuple[float, int]] = [(0.0, config.replicas)]

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

    def _place(self, request: int, work: float, kv: int) -> tuple[_Replica, float, int] | None:
        """The replica a request starts on now, with its work and KV there; None: none fits."""
        best = None
        if self.rollout is None:
            for r in self._serving:
                if self._fits(r, kv) and (best is None or r.n < best.n):
                    best = r
            return None if best is None else (best, work, kv)
        assert self._cost is not None
        priced: dict[int, tuple[float, int]] = {}
        for r in self._serving:
            if r.template not in priced:
                priced[r.template] = self._cost(request, r.template)
            if self._fits(r, priced[r.template][1]) and (best is None or r.n < best.n):
                best = r
        return None if best is None else (best, *priced[best.template])

    def _start(self, r: _Replica, t: float, request: int, work: float, kv: int) -> None:
        self._advance(r, t)
        heapq.heappush(r.heap, (r.v + work, request, kv))
        r.n += 1
        r.kv += kv
        self._schedule(r)
        self.started[request] = t
        self.start_order[request] = self._order
        self._order += 1
        self.replica_of[request] = r.id
        if self.rollout is not None:
            self.budget_of[request] = r.template

    def _admit(self, t: float) -> None:
        queue = self._queue
        while queue:
            placed = self._place(*queue[0])
            if placed is None:
                return
            request = queue.popleft()[0]
            self._start(placed[0], t, request, placed[1], placed[2])

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
        if r.n == 0 and r.stop_at < INF:  # drained
            self._replicas.remove(r)
            self.gone[r.id] = t
        self._admit(t)

    def _next(self) -> tuple[float, _Replica | None]:
        best: _Replica | None = None
        when = INF
        for r in self._replicas:
            if r.next_done < when:
                when, best = r.next_done, r
        return when, best

    def _next_ready(self) -> tuple[float, _Replica | None]:
        best: _Replica | None = None
        when = INF
        if len(self._serving) < len(self._replicas):
            for r in self._replicas:
                if r.stop_at == INF and r.ready_at < when and r not in self._serving:
                    when, best = r.ready_at, r
        return when, best

    # ------------------------------------------------------------------ rollouts

    def _account(self, t: float) -> None:
        """Add the replica-seconds lost since the last change; record the serving count."""
        missing = max(self.config.replicas - len(self._serving), 0)
        self.lost_s += missing * max(t - self._lost_t, 0.0)
        self._lost_t = max(self._lost_t, t)

    def _served(self, t: float) -> None:
        if self.serving_log[-1][1] != len(self._serving):
            self.serving_log.append((t, len(self._serving)))

    def _ready(self, r: _Replica, t: float) -> None:
        self._account(t)
        self._serving.append(r)
        self._serving.sort(key=lambda x: x.id)
        self._served(t)
        self._roll(t)
        self._admit(t)

    def _roll(self, t: float) -> None:
        """Run the rolling update at ``t`` until it waits for a pod to become ready."""
        spec = self.rollout
        assert spec is not None
        while True:
            pods = [
                rolling.Pod(r.id, r.template, r in self._serving)
                for r in self._replicas
                if r.stop_at == INF
            ]
            plan = rolling.step(
                pods, self.newest, self.config.replicas, spec.max_surge, spec.max_unavailable
            )
            if plan.idle:
                return
            self._account(t)
            for pid in plan.remove:
                r = self.pods[pid]
                r.stop_at, r.stop_order = t, self._order
                self._order += 1
                if r in self._serving:
                    self._serving.remove(r)
                if r.n == 0:
                    self._replicas.remove(r)
                    self.gone[r.id] = t
            for _ in range(plan.create):
                r = _Replica(len(self.pods), self.newest, t + spec.restart_s)
                self.pods[r.id] = r
                self._replicas.append(r)
                if spec.restart_s == 0:
                    self._serving.append(r)
            self._served(t)
            if not (plan.create and spec.restart_s == 0):
                return

    def set_template(self, budget: int, t: float) -> None:
        """Write ``budget`` to the pod template at ``t``: a rollout when it changes."""
        if self.rollout is None:
            raise ValueError("set_template needs a fleet with a rollout")
        if budget == self.newest:
            return
        self.newest = budget
        self.rollouts += 1
        self._roll(t)
        self._admit(t)

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
            ready_at, starting = self._next_ready()
            arrive_at = arrivals[i][0] if i < count else INF
            if starting is not None and ready_at <= min(arrive_at, done_at, until):
                self._ready(starting, ready_at)
            elif arrive_at <= done_at:
                if arrive_at >= until:
                    break
                t, request, work, kv = arrivals[i]
                i += 1
                self.arrived += 1
                self.arrival[request] = t
                placed = None if queue else self._place(request, work, kv)
                if placed is None:
                    queue.append((request, work, kv))
                    self.max_queue = max(self.max_queue, len(queue))
                else:
                    self._start(placed[0], t, request, placed[1], placed[2])
            else:
                if done_at > until or replica is None:
                    break
                self._finish(replica, done_at)
        if i < count:
            raise ValueError(f"arrival at {arrivals[i][0]} is not before {until}")
        if until < INF:
            self._account(until)
        self.now = max(self.now, until)

    def drain(self) -> None:
        """Serve everything still queued or running, with no more arrivals."""
        while self.completed < self.arrived:
            done_at, replica = self._next()
            ready_at, starting = self._next_ready()
            if starting is not None and ready_at <= done_at:
                self._ready(starting, ready_at)
            elif replica is not None:
                self._finish(replica, done_at)
            else:
                break
        self.now = max(self.now, self.log_time[-1] if self.log_time else self.now)
        self._account(self.now)

    # ------------------------------------------------------------------ state

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> int:
        return sum(r.n for r in self._replicas)

    @property
    def serving(self) -> int:
        """Replicas taking requests now."""
        return len(self._serving)

    def window(self, now: float, seconds: float) -> tuple[int, int]:
        """Indices ``[lo, hi)`` of :attr:`log` completed within ``(now - seconds, now]``."""
        return bisect_right(self.log_time, now - seconds), len(self.log_time)

    def signals(self, now: float) -> FleetSignals:
        lo, hi = self.window(now, self.config.window_s)
        latencies = sorted(self.done[q] - self.arrival[q] for q in self.log[lo:hi])
        kv = max((min(r.kv / self.config.kv_tokens, 1.0) for r in self._replicas), default=0.0)
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
