"""``stopbudget demo`` (``make demo``): the whole control loop on one machine, for real.

Nothing is mocked except the GPUs:

* **Prometheus**, Debian's binary (:class:`~stopbudget.devkit.servers.DevPrometheus`),
  scraping every second;
* an **engine exporter** (:class:`~stopbudget.devkit.exporter.EngineExporter`) that
  publishes vLLM's own series (``vllm:num_requests_waiting``, the e2e latency
  histogram, ...) for a **simulated fleet**: two vLLM replicas with continuous
  batching (:mod:`stopbudget.sim.fleet`), fed by a stretch of the real Azure
  conversation trace (``data/traces/``), time-compressed against the wall clock;
* kmock's **Kubernetes emulator** (:mod:`stopbudget.devkit.emulator`) holding the vLLM
  Deployment (container ``vllm`` with ``--override-generation-config``, and a
  sidecar that must stay untouched) and the example StopPolicy
  (``examples/vllm-arg-sink.yaml``, its control timings shortened for the
  compressed clock, its audit section dropped: the demo has no model to audit);
* the **operator** itself, ``stopbudget run``, as a subprocess in its own
  session (its log is ``OUT/operator.log``), stopped by its PID.

The loop is closed: every request is served at the budget that the Deployment's
argument holds when the request arrives (read back with
:func:`stopbudget.core.sinks.read`), and generates what :mod:`stopbudget.sim.model`
says it does at that budget: the thinking tokens Gemini 2.5 Flash used on that
FRAMES question at that budget (``data/quality/``) plus the trace's answer
tokens, cut at ``max_new_tokens``.  So a lower budget really shortens requests,
which frees batch slots and drains the queue.  (On a cluster an argument change
rolls the pods; here the new budget applies to the next arrivals at once.)

Time: ``--speed X`` runs the simulated clock X times faster than the wall clock;
by default a 40-minute stretch around the trace's busiest ten minutes is
replayed in ``--duration`` seconds.  The operator, Prometheus and the policy's
``interval``/``cooldown``/``downscaleStabilization`` run on the wall clock.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import pairwise
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any, NamedTuple, TextIO

from stopbudget.cli.demo import DEFAULT_DURATION_S, DEFAULT_STRETCH_S

if TYPE_CHECKING:
    from stopbudget.api import StopPolicySpec
    from stopbudget.devkit.emulator import ThreadedCluster
    from stopbudget.devkit.exporter import EngineExporter
    from stopbudget.devkit.servers import DevPrometheus
    from stopbudget.sim.fleet import Fleet, FleetConfig, FleetSignals
    from stopbudget.sim.inputs import QualityTable, Trace
    from stopbudget.sim.model import Served, Workload

NAMESPACE = "serving"
DEPLOYMENT = "vllm-llama"
POLICY = "llama-chat"
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
SP = ("stopbudget.io/v1alpha1", "StopPolicy")
DEPLOY = ("apps/v1", "Deployment")
#: The static budget the Deployment starts with (the policy's budget.max).
ORIGINAL_BUDGET = 1024
SINK_FLAG = "--override-generation-config"

#: Trace seconds replayed when --speed is not given.
#: Wall seconds between two steps of the simulated fleet (and status polls).
STEP_S = 0.1
#: Wall seconds between two progress lines.
PROGRESS_EVERY_S = 10.0
#: Simulated seconds of arrivals the "load" figure averages over.
LOAD_WINDOW_S = 60.0
SEED = 0

#: The policy's control timings on the wall clock (the example's are 30s, 10m and 5m).
CONTROL = {"interval": "1s", "cooldown": "2s", "downscaleStabilization": "2s"}

#: Two vLLM replicas (simulated): ``--max-num-seqs 40``, a decode step of 10 ms plus
#: 0.2 ms per sequence in the batch (about 55 tokens/s per sequence at a full batch).
#: Sized so that the trace's peak needs more than the fleet can do at the EM-target
#: budget (768) but about what it can do at the floor (512).
REPLICAS = 2
MAX_NUM_SEQS = 40

#: A sidecar the operator must leave alone: it serves the engine's metrics behind RBAC.
SIDECAR: dict[str, Any] = {
    "name": "kube-rbac-proxy",
    "image": "quay.io/brancz/kube-rbac-proxy:v0.18.0",
    "args": ["--secure-listen-address=0.0.0.0:8443", "--upstream=http://127.0.0.1:8000/"],
    "ports": [{"name": "https-metrics", "containerPort": 8443}],
}

TRACE = Path("data/traces/AzureLLMInferenceTrace_conv.csv")
QUALITY = Path("data/quality/wide_gemini-2.5-flash_frames.csv")
EXAMPLE = Path("examples/vllm-arg-sink.yaml")
INSTALL_HINT = "install stopbudget[demo] (pip install 'stopbudget[demo]', or run make demo)"


class DemoError(Exception):
    """The demo cannot run or went wrong; the message says what to do."""


class _Terminated(BaseException):
    """SIGTERM arrived: stop as after Ctrl-C."""


# ============================================================================ results


@dataclass(frozen=True)
class Decision:
    """A budget change the operator made, as seen in the StopPolicy's status."""

    #: Simulated (trace) time and wall seconds since the replay started (negative: before).
    time: datetime
    wall: float
    previous: int | None
    budget: int
    pressure: float | None
    #: Requests per second arriving (trace) around ``time``.
    load: float
    reason: str


@dataclass
class DemoResult:
    """What a run did; ``exit_code`` is the command's exit code."""

    exit_code: int = 1
    decisions: list[Decision] = field(default_factory=list)
    #: Budget patches of the Deployment (its generation went up this many times).
    patches: int = 0
    #: Whether the sidecar container is byte-identical to the one created (None: not checked).
    sidecar_identical: bool | None = None
    #: Whether the operator put the original argument back when the policy was deleted.
    restored: bool | None = None
    png: Path | None = None
    #: PIDs of the processes the demo started: ``prometheus`` and ``operator``.
    pids: dict[str, int] = field(default_factory=dict)
    #: The EM-target and EM-floor budgets the operator reported.
    target: int | None = None
    floor: int | None = None
    tokens: int = 0
    tokens_static_max: int = 0
    floor_share: float = 0.0


@dataclass(frozen=True)
class Options:
    duration: float = DEFAULT_DURATION_S
    #: Simulated seconds per wall second; None: DEFAULT_STRETCH_S in ``duration``.
    speed: float | None = None
    out: Path = Path("demo-out")
    quiet: bool = False
    #: Where data/ and examples/ are (the source checkout).
    root: Path = Path(__file__).resolve().parents[3]


# ============================================================================ output


class _Console:
    def __init__(self, stream: TextIO, quiet: bool) -> None:
        self.stream = stream
        self.quiet = quiet
        #: "interrupted: stopping ..." was said.
        self.stopping = False

    def say(self, text: str = "", *, always: bool = False) -> None:
        if always or not self.quiet:
            self.stream.write(text + "\n")
            self.stream.flush()


def _clock(moment: datetime) -> str:
    return moment.strftime("%H:%M:%S")


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


COLUMNS = "  sim time  load       queue  p95 lat  pressure  budget          reason"


def _line(
    moment: datetime,
    load: float,
    queue: int | None,
    latency: float | None,
    pressure: float | None,
    budget: str,
    reason: str,
) -> str:
    q = "-" if queue is None else str(queue)
    lat = "-" if latency is None else f"{latency:.0f} s"
    return (
        f"  {_clock(moment)}  {load:4.1f} req/s  {q:>5}  {lat:>7}  {_num(pressure):>8}  "
        f"{budget:<14}  {reason}"
    )


# ============================================================================ inputs


class _Stretch(NamedTuple):
    """The part of the trace replayed."""

    trace: Trace
    #: Offset of the stretch in the whole trace, and its length (simulated seconds).
    offset: float
    length: float
    speed: float


def _stretch_start(arrivals: Sequence[float], length: float) -> float:
    """Start of the stretch: around the busiest ten minutes, 40 % before and 60 % after."""
    total = arrivals[-1]
    if length >= total:
        return 0.0
    block = min(600.0, length)
    best, start, t = -1, 0.0, 0.0
    while t + block <= total:
        count = bisect_left(arrivals, t + block) - bisect_left(arrivals, t)
        if count > best:
            best, start = count, t
        t += 10.0
    centre = start + block / 2
    return min(max(centre - 0.4 * length, 0.0), total - length)


def _stretch(trace: Trace, options: Options) -> _Stretch:
    from stopbudget.sim.inputs import Trace

    speed = options.speed if options.speed is not None else DEFAULT_STRETCH_S / options.duration
    length = min(options.duration * speed, trace.duration)
    offset = _stretch_start(trace.arrivals, length)
    lo = bisect_left(trace.arrivals, offset)
    hi = bisect_left(trace.arrivals, offset + length)
    part = Trace(
        source=trace.source,
        start=trace.start + timedelta(seconds=offset),
        arrivals=tuple(a - offset for a in trace.arrivals[lo:hi]),
        context=trace.context[lo:hi],
        generated=trace.generated[lo:hi],
    )
    return _Stretch(part, offset, length, speed)


def _policy(root: Path, model_name: str) -> dict[str, Any]:
    """The example StopPolicy, adapted to the compressed clock and to the demo."""
    import yaml

    from stopbudget import api

    doc: dict[str, Any] = yaml.safe_load((root / EXAMPLE).read_text(encoding="utf-8"))
    spec = doc["spec"]
    # Audits send a golden set to the model's endpoint: the demo has no model to ask.
    spec.pop("audit", None)
    spec["control"].update(CONTROL)
    spec["load"]["selector"]["model_name"] = model_name
    api.StopPolicy.model_validate(doc)
    return doc


def _deployment() -> dict[str, Any]:
    vllm = {
        "name": "vllm",
        "image": "vllm/vllm-openai:v0.11.0",
        "args": [
            "--model",
            MODEL,
            "--max-num-seqs",
            str(MAX_NUM_SEQS),
            f'{SINK_FLAG}={{"max_new_tokens": {ORIGINAL_BUDGET}}}',
        ],
        "ports": [{"name": "http", "containerPort": 8000}],
        "resources": {"limits": {"nvidia.com/gpu": "1"}},
    }
    labels = {"app": DEPLOYMENT}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": DEPLOYMENT, "namespace": NAMESPACE, "labels": labels},
        "spec": {
            "replicas": REPLICAS,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [vllm, json.loads(json.dumps(SIDECAR))]},
            },
        },
    }


def _fleet_config() -> FleetConfig:
    from stopbudget.sim.fleet import FleetConfig

    return FleetConfig(
        replicas=REPLICAS, max_batch=MAX_NUM_SEQS, step_base_s=0.010, step_per_seq_s=0.0002
    )


# ============================================================================ the fleet


class _Replay:
    """The simulated fleet under the trace stretch, exporting vLLM's series as it goes."""

    def __init__(
        self,
        stretch: _Stretch,
        quality: QualityTable,
        spec: StopPolicySpec,
        config: FleetConfig,
        exporter: EngineExporter,
    ) -> None:
        from stopbudget.sim.fleet import Fleet
        from stopbudget.sim.model import Workload

        self.stretch = stretch
        self.quality = quality
        self.kind = spec.budget.kind
        self.config = config
        self.exporter = exporter
        self.workload: Workload = Workload.of(stretch.trace, quality, 1.0, 1.0, SEED)
        n = len(self.workload)
        self.fleet: Fleet = Fleet(config, n)
        self.arrived = 0
        self._reported = 0
        self.budget_of = [0] * n
        self.generated = [0] * n
        self._served: dict[int, Served] = {}

    def served(self, budget: int) -> Served:
        """Every request of the stretch served at ``budget`` (the simulator's token model)."""
        from stopbudget.sim.model import serve

        if budget not in self._served:
            self._served[budget] = serve(
                self.workload, self.quality, budget, self.kind, self.config.prefill_weight
            )
        return self._served[budget]

    def advance(self, until: float, budget: int) -> FleetSignals:
        """Run the fleet to ``until`` (simulated seconds); new arrivals get ``budget``."""
        w, served = self.workload, self.served(budget)
        arrivals = []
        while self.arrived < len(w) and w.arrivals[self.arrived] < until:
            i = self.arrived
            arrivals.append((w.arrivals[i], i, served.work[i], served.kv[i]))
            self.budget_of[i] = budget
            self.generated[i] = served.generated[i]
            self.arrived += 1
        fleet = self.fleet
        fleet.run(max(until, fleet.now), arrivals)
        for q in fleet.log[self._reported :]:
            self.exporter.finish_request(
                fleet.done[q] - fleet.arrival[q],
                finished_reason="length" if self.generated[q] >= self.budget_of[q] else "stop",
                prompt_tokens=w.context[q],
                generation_tokens=self.generated[q],
            )
        self._reported = len(fleet.log)
        signals = fleet.signals(fleet.now)
        self.exporter.set_load(
            waiting=signals.queue, running=signals.running, kv_cache=signals.kv_cache
        )
        return signals

    def load(self, at: float) -> float:
        """Requests per second arriving in the trace over the minute before ``at``."""
        arrivals = self.workload.arrivals
        span = min(LOAD_WINDOW_S, max(at, 1.0))
        return (bisect_right(arrivals, at) - bisect_right(arrivals, at - span)) / span


class _Outcome(NamedTuple):
    tokens: int
    max_queue: int
    p95_latency: float


def _outcome(fleet: Fleet, generated: Sequence[int], count: int) -> _Outcome:
    from stopbudget.sim.fleet import quantile

    fleet.drain()
    latencies = sorted(fleet.done[i] - fleet.arrival[i] for i in range(count))
    return _Outcome(sum(generated[:count]), fleet.max_queue, quantile(latencies, 0.95))


def _static(replay: _Replay, budget: int, until: float) -> _Outcome:
    """The same requests on the same fleet at a fixed budget (for comparison)."""
    from stopbudget.sim.fleet import Fleet

    w, served = replay.workload, replay.served(budget)
    fleet = Fleet(replay.config, len(w))
    count = replay.arrived
    fleet.run(until, [(w.arrivals[i], i, served.work[i], served.kv[i]) for i in range(count)])
    return _outcome(fleet, served.generated, count)


# ============================================================================ timeline


class _Sample(NamedTuple):
    sim: float
    queue: int
    budget: int


class _Tick(NamedTuple):
    sim: float
    pressure: float | None
    budget: int | None
    target: int | None
    floor: int | None
    reason: str
    signals: Mapping[str, float]


# ============================================================================ processes


def _start_operator(
    kubeconfig: Path, prometheus_url: str, window: str, log: IO[bytes]
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOPBUDGET_")}
    env |= {
        "STOPBUDGET_QUERY_WINDOW": window,
        "STOPBUDGET_METRICS_PORT": "0",
        "STOPBUDGET_BIND_ADDRESS": "127.0.0.1",
        "STOPBUDGET_PROMETHEUS_TIMEOUT_SECONDS": "2",
        "PYTHONUNBUFFERED": "1",
    }
    command = [sys.executable, "-m", "stopbudget", "run", "--all-namespaces"]
    command += ["--kubeconfig", str(kubeconfig), "--prometheus-url", prometheus_url]
    return subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,  # Ctrl-C reaches the demo only; it stops the operator in order
    )


def _query_window(speed: float) -> str:
    """Rate window of the presets' queries: about five simulated minutes, 4-10 wall seconds."""
    return f"{min(10, max(4, math.ceil(300 / speed)))}s"


def _query_value(prom: DevPrometheus, expr: str) -> float:
    """The value of a one-series query (0 when empty or failing)."""
    from stopbudget.devkit.servers import ServerError

    try:
        result = prom.query(expr)["result"]
    except ServerError:
        return 0.0
    return max((float(r["value"][1]) for r in result), default=0.0)


def _stop_process(process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM, wait, SIGKILL: by PID, this process only."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class _Signals:
    """Ctrl-C (SIGINT) and SIGTERM stop the demo; during cleanup both wait.

    Only the main thread can handle signals: elsewhere this does nothing.
    """

    def __init__(self) -> None:
        self.active = threading.current_thread() is threading.main_thread()
        self.saved: list[tuple[int, Any]] = []

    @staticmethod
    def _terminate(signum: int, frame: FrameType | None) -> None:
        raise _Terminated

    def __enter__(self) -> _Signals:
        if self.active:
            self.saved = [(s, signal.getsignal(s)) for s in (signal.SIGINT, signal.SIGTERM)]
            self.release()
        return self

    def hold(self) -> None:
        """A second Ctrl-C during cleanup must not leave processes behind."""
        if self.active:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def release(self) -> None:
        if self.active:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, self._terminate)

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self.saved:
            signal.signal(signum, handler)


# ============================================================================ the run


def run(options: Options, stream: TextIO | None = None) -> DemoResult:
    """Run the demo; everything it started is stopped when this returns.

    Ctrl-C gives exit code 130 and SIGTERM 143, after the same cleanup.
    """
    console = _Console(stream if stream is not None else sys.stdout, options.quiet)
    result = DemoResult()
    result.exit_code = guarded(lambda signals: _run(options, console, result, signals), console)
    return result


def guarded(body: Callable[[_Signals], None], console: _Console) -> int:
    """Run a demo's ``body`` with Ctrl-C and SIGTERM caught; its exit code: 0, 1 on a
    :class:`DemoError` (said on stderr), 130 on Ctrl-C, 143 on SIGTERM."""
    with _Signals() as signals:
        try:
            body(signals)
        except (KeyboardInterrupt, _Terminated) as exc:
            code = 130 if isinstance(exc, KeyboardInterrupt) else 143
            if not console.stopping:
                console.say("interrupted" if code == 130 else "terminated", always=True)
            return code
        except DemoError as exc:
            sys.stderr.write(f"stopbudget demo: {exc}\n")
            return 1
    return 0


def _run(options: Options, console: _Console, result: DemoResult, signals: _Signals) -> None:
    try:
        import kmock  # noqa: F401
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise DemoError(f"{exc.name} is missing: {INSTALL_HINT}") from None
    from stopbudget.devkit import servers

    if servers.missing_binaries(servers.PROMETHEUS):
        raise DemoError(
            "prometheus is not installed: install the Debian package prometheus (make demo does it)"
        )
    stack = contextlib.ExitStack()
    demo = _Demo(options, console, result, stack)
    try:
        demo.run()
    except (KeyboardInterrupt, _Terminated) as exc:
        signals.hold()
        what = "interrupted" if isinstance(exc, KeyboardInterrupt) else "terminated"
        console.say(f"{what}: stopping everything the demo started", always=True)
        console.stopping = True
        raise
    finally:
        signals.hold()
        stack.close()
        if demo.started:
            console.say(demo.stopped_line(), always=True)
        signals.release()
    demo.finish()


class _Demo:
    """One run: start everything, replay, inspect; :meth:`finish` reports (after cleanup)."""

    def __init__(
        self,
        options: Options,
        console: _Console,
        result: DemoResult,
        stack: contextlib.ExitStack,
    ) -> None:
        self.options = options
        self.console = console
        self.result = result
        self.stack = stack
        #: What was started, for the closing line ("operator (pid 12)", ...).
        self.started: list[str] = []
        self.samples: list[_Sample] = []
        self.ticks: list[_Tick] = []
        self.replay: _Replay | None = None
        self.events: int | None = None
        self.target: int | None = None
        self.floor: int | None = None
        self.restored_to: str | None = None
        self.replay_wall = 0.0
        self.other_args_kept: bool | None = None
        self.log_path = options.out / "operator.log"

    # Set by run(), in this order.
    stretch: _Stretch
    cluster: ThreadedCluster
    operator: subprocess.Popen[bytes]
    spec: StopPolicySpec
    watch: _Watch
    deployment0: dict[str, Any]

    def run(self) -> None:
        began = time.monotonic()
        stretch, quality = self._inputs()
        self.stretch = stretch
        config = _fleet_config()
        self._header(config)
        exporter = self._start()
        self.replay = _Replay(stretch, quality, self.spec, config, exporter)
        self._settle()
        say = self.console.say
        say(f"ready in {time.monotonic() - began:.1f} s: replaying the trace\n")
        say(COLUMNS)
        self._replay(self.replay)
        self._inspect()

    # ------------------------------------------------------------------ set-up

    def _inputs(self) -> tuple[_Stretch, QualityTable]:
        from stopbudget.sim.inputs import InputError, load_quality, load_trace

        root = self.options.root
        for path in (TRACE, QUALITY, EXAMPLE):
            if not (root / path).is_file():
                raise DemoError(
                    f"{root / path} is missing: run the demo from a source checkout "
                    "(make demo), which holds data/ and examples/"
                )
        try:
            trace = load_trace(root / TRACE)
            quality = load_quality(root / QUALITY)
        except InputError as exc:
            raise DemoError(str(exc)) from None
        return _stretch(trace, self.options), quality

    def _header(self, config: FleetConfig) -> None:
        say, stretch = self.console.say, self.stretch
        end = stretch.trace.start + timedelta(seconds=stretch.length)
        say("stopbudget demo: the control loop, for real, on a real LLM serving trace")
        say(
            f"  traffic  {TRACE.name} (Azure, CC-BY-4.0): {_clock(stretch.trace.start)}-"
            f"{_clock(end)}, {len(stretch.trace):,} requests, replayed x{stretch.speed:.3g} "
            f"in {stretch.length / stretch.speed:.0f} s"
        )
        say(
            f"  fleet    {REPLICAS} vLLM replicas, simulated (continuous batching, "
            f"--max-num-seqs {MAX_NUM_SEQS}): {config.capacity:,.0f} tokens/s at full batch; "
            f"it serves each request at the budget in the Deployment's {SINK_FLAG}"
        )
        say(
            "  tokens   per request: Gemini 2.5 Flash's thinking tokens on a FRAMES question "
            "at that budget + the trace's answer tokens, cut at max_new_tokens"
        )
        say(
            f"  policy   {EXAMPLE} with control "
            + ", ".join(f"{k} {v}" for k, v in CONTROL.items())
            + f" (wall clock), rate window {_query_window(stretch.speed)}; no audit section"
        )

    def _alive(self) -> None:
        code = self.operator.poll()
        if code is not None:
            raise DemoError(
                f"the operator exited with code {code}; the end of {self.log_path}:\n"
                + _tail(self.log_path)
            )

    def _start(self) -> EngineExporter:
        """Exporter and Prometheus first (target discovery takes ~5 s), then the rest."""
        from stopbudget import api
        from stopbudget.devkit import servers
        from stopbudget.devkit.emulator import emulated_cluster_in_thread
        from stopbudget.devkit.exporter import EngineExporter

        stack, options = self.stack, self.options
        exporter = stack.enter_context(EngineExporter(model_name=MODEL))
        exporter.set_load(waiting=0, running=0, kv_cache=0)
        prom = servers.DevPrometheus(jobs=("engines",))
        stack.callback(prom.close)
        labels = {"namespace": NAMESPACE, "pod": f"{DEPLOYMENT}-0"}
        prom.add_targets("engines", DEPLOYMENT, [exporter.target], labels=labels)
        try:
            prom.start()
        except servers.ServerError as exc:
            raise DemoError(str(exc)) from None
        assert prom.pid is not None
        self.result.pids["prometheus"] = prom.pid
        self.started.append(f"Prometheus (pid {prom.pid})")

        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="stopbudget-demo-")))
        self.cluster = stack.enter_context(emulated_cluster_in_thread(workdir, record=False))
        self.started.append("Kubernetes API emulator")
        self.deployment0 = self.cluster.create(_deployment())

        options.out.mkdir(parents=True, exist_ok=True)
        log = stack.enter_context(self.log_path.open("wb"))
        window = _query_window(self.stretch.speed)
        self.operator = _start_operator(self.cluster.kubeconfig, prom.url, window, log)
        stack.callback(_stop_process, self.operator)
        self.result.pids["operator"] = self.operator.pid
        self.started.insert(0, f"operator (pid {self.operator.pid})")
        self.console.say(
            f"starting: Prometheus pid {prom.pid} ({prom.url}), Kubernetes API emulator "
            f"({self.cluster.url}), operator pid {self.operator.pid} (log {self.log_path})"
        )

        # Two scrapes before the policy exists: the presets' rate() queries need two
        # samples, and without them the operator's first ticks would read "no data".
        self.console.say("  waiting for Prometheus to discover and scrape the engine (~7 s) ...")
        scrapes = f'count_over_time(vllm:num_requests_waiting{{model_name="{MODEL}"}}[1m])'
        deadline = time.monotonic() + 30
        while _query_value(prom, scrapes) < 2:
            self._alive()
            if time.monotonic() > deadline:
                raise DemoError(f"Prometheus did not scrape {exporter.url} within 30 s")
            time.sleep(STEP_S)

        doc = _policy(options.root, exporter.model_name)
        self.spec = api.StopPolicy.model_validate(doc).spec
        self.cluster.create(doc)
        return exporter

    def _applied(self) -> int:
        """The budget the Deployment's argument holds now (the fleet's view of it)."""
        from stopbudget.core import sinks

        dep = self.cluster.get(*DEPLOY, NAMESPACE, DEPLOYMENT)
        assert dep is not None
        value = sinks.read(self.spec.budget, self.spec.target_ref, deployment=dep).budget
        return value if value is not None else ORIGINAL_BUDGET

    def _settle(self) -> None:
        """Wait until the operator has applied its idle budget (the EM-target budget)."""
        self.watch = _Watch(self, self._applied())
        deadline = time.monotonic() + 30
        while not self.ticks or self.ticks[-1].budget != self.ticks[-1].target:
            self._alive()
            self.watch.poll(0.0, -1.0, 0)
            if time.monotonic() > deadline:
                if self.ticks:
                    return
                raise DemoError(
                    f"the operator did not evaluate the policy within 30 s; see "
                    f"{self.log_path}:\n" + _tail(self.log_path)
                )
            time.sleep(STEP_S)

    # ------------------------------------------------------------------ the replay

    def _replay(self, replay: _Replay) -> None:
        """The simulated clock runs ``speed`` times the wall clock, in steps of STEP_S."""
        say, watch, stretch = self.console.say, self.watch, self.stretch
        for line in watch.take():
            say(line)
        start = time.monotonic()
        step = 0
        next_progress = PROGRESS_EVERY_S
        while True:
            wall = time.monotonic() - start
            sim = min(wall * stretch.speed, stretch.length)
            budget = self._applied()
            signals = replay.advance(sim, budget)
            self.samples.append(_Sample(sim, signals.queue, budget))
            self._alive()
            watch.poll(sim, wall, signals.queue)
            for line in watch.take():
                say(line)
            if wall >= next_progress and sim < stretch.length:
                if wall - watch.last_decision_wall > 3.0:
                    say(watch.progress(sim, signals.queue))
                next_progress += PROGRESS_EVERY_S
            if sim >= stretch.length:
                break
            step += 1
            time.sleep(max(0.0, start + step * STEP_S - time.monotonic()))
        self.replay_wall = time.monotonic() - start

    def _inspect(self) -> None:
        """What the Deployment shows now; then delete the policy: the operator restores."""
        from stopbudget.core import sinks

        cluster, spec, before = self.cluster, self.spec, self.deployment0
        final = cluster.get(*DEPLOY, NAMESPACE, DEPLOYMENT)
        assert final is not None
        self.result.patches = int(final["metadata"]["generation"]) - int(
            before["metadata"]["generation"]
        )
        self.result.sidecar_identical = _container(final, SIDECAR["name"]) == _container(
            before, SIDECAR["name"]
        )
        self.other_args_kept = _args_without_sink(final) == _args_without_sink(before)
        self.events = _count_events(cluster, "BudgetChanged")
        original = sinks.read(spec.budget, spec.target_ref, deployment=before).raw
        cluster.delete(*SP, NAMESPACE, POLICY)
        try:
            cluster.wait_for(*SP, NAMESPACE, POLICY, lambda o: o is None, within=15)
        except TimeoutError:
            self.result.restored = False
        else:
            dep = cluster.get(*DEPLOY, NAMESPACE, DEPLOYMENT)
            assert dep is not None
            self.restored_to = sinks.read(spec.budget, spec.target_ref, deployment=dep).raw
            self.result.restored = self.restored_to == original

    def stopped_line(self) -> str:
        return "stopped: " + ", ".join(self.started) + "; nothing left running"

    # ------------------------------------------------------------------ the summary

    def finish(self) -> None:
        """Figures, summary and plot (everything the demo started is stopped by now)."""
        replay = self.replay
        assert replay is not None
        result, stretch = self.result, self.stretch
        count = replay.arrived
        live = _outcome(replay.fleet, replay.generated, count)
        static = {
            b: _static(replay, b, stretch.length)
            for b in sorted({ORIGINAL_BUDGET, *([self.target] if self.target else [])})
        }
        result.tokens = live.tokens
        result.tokens_static_max = static[ORIGINAL_BUDGET].tokens
        result.target, result.floor = self.target, self.floor
        at_floor = at_target = 0.0
        for a, b in pairwise(self.samples):
            at_floor += (b.sim - a.sim) * (a.budget == self.floor)
            at_target += (b.sim - a.sim) * (a.budget == self.target)
        result.floor_share = at_floor / stretch.length
        result.png = self._plot()

        def say(text: str) -> None:
            self.console.say(text, always=True)

        say(
            f"\nsummary: {stretch.length / 60:.0f} minutes of trace ({count:,} requests) "
            f"replayed in {self.replay_wall:.0f} s"
        )
        events = "" if self.events is None else f" ({self.events} BudgetChanged Events)"
        say(f"  budget patches     {result.patches} to Deployment {DEPLOYMENT}{events}")
        say(
            f"  time at the floor  {result.floor_share:.0%} at {self.floor} (EM-floor budget); "
            f"{at_target / stretch.length:.0%} at {self.target} (EM-target budget)"
        )
        say("  compared on the same requests and the same simulated fleet:")
        say(f"    {'':<12}{'tokens':>11}{'max queue':>11}{'p95 latency':>13}")
        rows = [("stopbudget", live, "")]
        for budget, outcome in sorted(static.items()):
            note = (
                "(the Deployment's original value)"
                if budget == ORIGINAL_BUDGET
                else "(the EM-target budget, without load control)"
            )
            rows.append((f"static {budget}", outcome, note))
        for name, o, note in rows:
            say(
                f"    {name:<12}{o.tokens / 1e6:>9.2f} M{o.max_queue:>11}"
                f"{o.p95_latency:>11.0f} s   {note}".rstrip()
            )
        saved = ", ".join(
            f"{1 - live.tokens / o.tokens:.0%} vs static {b}" for b, o in sorted(static.items())
        )
        say(f"  tokens saved       {saved}")
        checks = {True: "untouched (byte-identical)", False: "CHANGED", None: "not checked"}
        others = {True: "unchanged", False: "CHANGED", None: "not checked"}
        say(
            f"  sidecar            {SIDECAR['name']}: {checks[result.sidecar_identical]}; "
            f"the other arguments of vllm: {others[self.other_args_kept]}"
        )
        if result.restored is not None:
            say(
                "  policy deleted     "
                + (
                    f"the operator restored {SINK_FLAG}={self.restored_to}"
                    if result.restored
                    else f"{SINK_FLAG} was NOT restored (it holds {self.restored_to!r})"
                )
            )
        say(f"  plot               {result.png}")

    def _plot(self) -> Path:
        import matplotlib as mpl

        mpl.use("Agg")
        import matplotlib.dates as mdates
        import matplotlib.pyplot as plt

        replay = self.replay
        assert replay is not None
        start = self.stretch.trace.start

        def when(sim: float) -> datetime:
            return start + timedelta(seconds=sim)

        fig, (ax_load, ax_p, ax_b) = plt.subplots(
            3, 1, figsize=(11, 8), sharex=True, height_ratios=(1.2, 1, 1)
        )
        # Load: arrivals per second (30 s bins of the trace) and the queue.
        arrivals = replay.workload.arrivals
        edges = [i * 30.0 for i in range(int(self.stretch.length // 30) + 1)]
        rates = [
            (bisect_left(arrivals, b) - bisect_left(arrivals, a)) / (b - a)
            for a, b in pairwise(edges)
        ]
        ax_load.step([when(e) for e in edges[1:]], rates, where="pre", color="tab:blue")
        ax_load.set_ylabel("arrivals (req/s)", color="tab:blue")
        ax_queue = ax_load.twinx()
        ax_queue.plot(
            [when(s.sim) for s in self.samples],
            [s.queue for s in self.samples],
            color="tab:orange",
            linewidth=1.0,
        )
        ax_queue.set_ylabel("queue (waiting)", color="tab:orange")
        ax_load.set_title(
            f"stopbudget demo: Azure conversation trace x{self.stretch.speed:.3g}, "
            f"{REPLICAS} simulated vLLM replicas, real Prometheus, operator and Kubernetes API"
        )
        ticks = [t for t in self.ticks if t.sim >= 0]
        ax_p.step(
            [when(t.sim) for t in ticks],
            [t.pressure if t.pressure is not None else math.nan for t in ticks],
            where="post",
            color="tab:red",
        )
        ax_p.axhline(1.0, color="grey", linestyle="--", linewidth=0.8)
        ax_p.set_ylabel("pressure (max value/target)")
        ax_p.set_ylim(bottom=0)
        ax_b.step(
            [when(s.sim) for s in self.samples],
            [s.budget for s in self.samples],
            where="post",
            color="black",
            label="applied (Deployment arg)",
        )
        for value, name, style in (
            (ORIGINAL_BUDGET, "static max (original)", ":"),
            (self.target, "EM-target budget", "--"),
            (self.floor, "EM-floor budget", "-."),
        ):
            if value is not None:
                ax_b.axhline(value, color="grey", linestyle=style, linewidth=0.8, label=name)
        ax_b.set_ylabel("max_new_tokens")
        ax_b.set_ylim(0, ORIGINAL_BUDGET * 1.1)
        ax_b.legend(loc="lower right", fontsize=8)
        ax_b.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))  # type: ignore[no-untyped-call]
        ax_b.set_xlabel(f"trace time (UTC, {start:%Y-%m-%d})")
        for ax in (ax_load, ax_p, ax_b):
            ax.grid(alpha=0.3)
        fig.tight_layout()
        path = self.options.out / "demo.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path


class _Watch:
    """Follows the StopPolicy's status: one tick per new lastEvaluationTime."""

    def __init__(self, demo: _Demo, budget: int) -> None:
        self.demo = demo
        self.last_stamp: str | None = None
        self.budget: int | None = budget
        self.pending: list[str] = []
        self.last_decision_wall = -math.inf

    def take(self) -> list[str]:
        """The decision lines not printed yet."""
        lines, self.pending = self.pending, []
        return lines

    def _latest(self) -> _Tick | None:
        return self.demo.ticks[-1] if self.demo.ticks else None

    def poll(self, sim: float, wall: float, queue: int | None) -> None:
        demo = self.demo
        obj = demo.cluster.get(*SP, NAMESPACE, POLICY)
        status = (obj or {}).get("status") or {}
        stamp = status.get("lastEvaluationTime")
        if not stamp or stamp == self.last_stamp:
            return
        self.last_stamp = stamp
        recommendation = status.get("recommendation") or {}
        budget = status.get("budget")
        tick = _Tick(
            sim=sim,
            pressure=status.get("pressure"),
            budget=budget,
            target=recommendation.get("target"),
            floor=recommendation.get("floor"),
            reason=str(recommendation.get("reason") or ""),
            signals=dict(status.get("signals") or {}),
        )
        demo.ticks.append(tick)
        demo.target = tick.target if tick.target is not None else demo.target
        demo.floor = tick.floor if tick.floor is not None else demo.floor
        if budget is None or budget == self.budget:
            return
        replay = demo.replay
        load = replay.load(sim) if replay is not None else 0.0
        moment = demo.stretch.trace.start + timedelta(seconds=sim)
        decision = Decision(moment, wall, self.budget, budget, tick.pressure, load, tick.reason)
        demo.result.decisions.append(decision)
        self.last_decision_wall = wall
        self.pending.append(
            _line(
                moment,
                load,
                queue,
                tick.signals.get("latencyP95"),
                tick.pressure,
                f"{self.budget} -> {budget}",
                tick.reason,
            )
        )
        self.budget = budget

    def progress(self, sim: float, queue: int) -> str:
        demo = self.demo
        tick = self._latest()
        replay = demo.replay
        load = replay.load(sim) if replay is not None else 0.0
        moment = demo.stretch.trace.start + timedelta(seconds=sim)
        return _line(
            moment,
            load,
            queue,
            tick.signals.get("latencyP95") if tick is not None else None,
            tick.pressure if tick is not None else None,
            f"{self.budget}  ·",
            tick.reason if tick is not None else "",
        )


# ============================================================================ helpers


def _container(deployment: Mapping[str, Any], name: str) -> str | None:
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        if container.get("name") == name:
            return json.dumps(container)
    return None


def _args_without_sink(deployment: Mapping[str, Any]) -> list[str]:
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        if container.get("name") == "vllm":
            return [a for a in container.get("args", []) if not a.startswith(SINK_FLAG)]
    return []


def _count_events(cluster: ThreadedCluster, reason: str) -> int | None:
    """Events with ``reason`` in the demo's namespace; None when they cannot be listed."""
    from stopbudget.devkit.emulator import EmulatorRequestError

    path = f"/api/v1/namespaces/{NAMESPACE}/events"
    try:
        answer: Any = cluster.run(lambda: cluster.cluster.request("GET", path))
    except EmulatorRequestError:
        return None
    items = answer.get("items", []) if isinstance(answer, dict) else []
    return sum(1 for item in items if item.get("reason") == reason)
