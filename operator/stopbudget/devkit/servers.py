"""Real Prometheus and Alertmanager on 127.0.0.1, for the tests and ``stopbudget demo``.

Both are the Debian packages' binaries (``prometheus``, ``prometheus-alertmanager``),
started in a temporary directory on a free port, polled on ``/-/ready`` until they
serve, and stopped by PID (terminate, wait, kill).  Both are context managers::

    with DevPrometheus(jobs=("engines",)) as prom, EngineExporter() as exporter:
        prom.add_targets("engines", "vllm-0", [exporter.target])
        prom.wait_for_targets("engines", [exporter.target])

Scrape targets, alert rules and Alertmanagers are files that Prometheus watches
(``file_sd_configs`` and a ``rule_files`` glob), so one Prometheus serves many
tests: add or remove targets while it runs.  Prometheus 2.42 hands discovered
targets to its scrape loop on a fixed 5 s tick, whether they come from file_sd
or from ``/-/reload``.  Measured here (5 runs each, 1 s scrape interval):

* ``/-/ready`` after start: 0.05-0.12 s;
* first sample of a target listed at start: 5.5-6.1 s after start (median 5.9);
* a target added by file_sd while running: 4.6-5.0 s (median 4.7);
* a target added to a static config and ``/-/reload``: 4.4-5.5 s (median 5.0);
* a target listed while down, once its server starts: 0.16-0.78 s (median 0.27).

So when speed matters, list targets up front and start and stop the servers
behind them (the test fixtures keep a pool of exporters that way).  Alerts
are re-sent every second (``--rules.alert.resend-delay``), so an alert that
fired before its Alertmanager was discovered reaches it about 5 s later
rather than a minute later.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from stopbudget.schema import yamlout

log = logging.getLogger(__name__)

PROMETHEUS = "prometheus"
PROMTOOL = "promtool"
ALERTMANAGER = "prometheus-alertmanager"
HOST = "127.0.0.1"

T = TypeVar("T")


class ServerError(RuntimeError):
    """A server would not start, or an API call to it failed."""


def find_binary(name: str) -> str | None:
    """Path of a server binary, or None when it is not installed."""
    return shutil.which(name)


def missing_binaries(*names: str) -> list[str]:
    """The binaries among ``names`` that are not installed."""
    return [n for n in names if find_binary(n) is None]


def free_port(host: str = HOST) -> int:
    """A TCP port that was free a moment ago (the server binding it retries on a clash)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Call ``probe`` until it returns something truthy; return that.

    Raises TimeoutError naming ``what`` after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not reached within {timeout:g}s")
        time.sleep(interval)


def http_json(
    method: str,
    url: str,
    body: Any = None,
    *,
    timeout: float = 5.0,
    headers: Mapping[str, str] | None = None,
    context: ssl.SSLContext | None = None,
) -> Any:
    """One HTTP call to a local server; the parsed JSON answer (None for an empty body).

    ``context`` verifies an https server (see :meth:`DevPrometheus.ssl_context`).
    """
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an http URL: {url}")
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(  # noqa: S310 - http(s) checked above
        url, data=data, method=method, headers=dict(headers or {})
    )
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(  # noqa: S310
            request, timeout=timeout, context=context
        ) as response:
            raw = response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            detail = exc.read().decode(errors="replace")[:500]
        raise ServerError(f"{method} {url}: HTTP {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ServerError(f"{method} {url}: {exc}") from None
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError:  # a plain-text answer (``/-/ready``): its text
        return raw.decode(errors="replace")


def _write_atomic(path: Path, text: str) -> None:
    """Write through a rename so a file watcher never reads half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


#: Servers started by this process and not stopped yet: stopped at interpreter exit, so a
#: test run that ends early (an error, Ctrl-C, SIGTERM from `timeout`) leaves none behind.
_RUNNING: set[_Server] = set()


@atexit.register
def _stop_all() -> None:
    for server in list(_RUNNING):
        server.stop(timeout=5.0)


class _Server:
    """One server process: a temporary directory, a free port, readiness and shutdown."""

    binary_name = ""
    label = ""

    def __init__(
        self, *, binary: str | None, ready_timeout: float, workdir: Path | None = None
    ) -> None:
        path = binary or find_binary(self.binary_name)
        if path is None:
            raise ServerError(
                f"{self.binary_name} is not installed: install the Debian package "
                f"(make test does it) or pass binary="
            )
        self.binary = path
        self.ready_timeout = ready_timeout
        self._own_dir = workdir is None
        self.dir = (
            Path(tempfile.mkdtemp(prefix=f"stopbudget-{self.label}-"))
            if workdir is None
            else workdir
        )
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None

    # -- to override
    def _args(self) -> list[str]:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Write config files before a start."""

    # -- common
    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.dir / f"{self.label}.log"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def start(self) -> Self:
        """Start and wait until ``/-/ready`` answers 200; keeps the port across restarts."""
        if self.running:
            return self
        self._prepare()
        keep_port = self.port != 0
        for attempt in range(3):
            if not keep_port or attempt > 0:
                self.port = free_port()
            self._spawn()
            try:
                wait_until(self._ready, timeout=self.ready_timeout, what=f"{self.label} ready")
            except (TimeoutError, ServerError) as exc:
                tail = self.log_tail()
                self.stop()
                if "address already in use" in tail and attempt < 2:
                    log.debug("%s: port %d taken, retrying", self.label, self.port)
                    continue
                raise ServerError(f"{self.label} did not start: {exc}\n{tail}") from None
            log.debug("%s ready at %s (pid %s)", self.label, self.url, self.pid)
            return self
        raise AssertionError("unreachable")

    def _spawn(self) -> None:
        self._log_file = self.log_path.open("ab")
        self._process = subprocess.Popen(
            [self.binary, *self._args()],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            cwd=self.dir,
            start_new_session=True,  # Ctrl-C in a demo reaches us, and we stop it in order
        )
        _RUNNING.add(self)

    def _ready(self) -> bool:
        """Whether the server answers the way the tests use it (raises if it exited)."""
        if self._process is not None and self._process.poll() is not None:
            raise ServerError(f"exited with code {self._process.returncode}")
        try:
            return self._serves()
        except (ServerError, urllib.error.URLError, OSError, ValueError):
            return False

    def _serves(self) -> bool:
        """``/-/ready`` answers 200 over its own scheme and CA; subclasses add a real call."""
        http_json("GET", f"{self.url}/-/ready", timeout=1.0, context=self.ssl_context())
        return True

    def ssl_context(self) -> ssl.SSLContext | None:
        """What verifies this server's certificate; None for plain http."""
        return None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the process by its PID: SIGTERM, wait, then SIGKILL. Keeps the directory."""
        process, self._process = self._process, None
        _RUNNING.discard(self)
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=timeout)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def close(self) -> None:
        """Stop and remove the temporary directory."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class DevPrometheus(_Server):
    """A real Prometheus with file-based targets, rules and Alertmanagers.

    ``jobs`` are scrape jobs whose targets are the JSON files under
    ``sd/<job>/`` (see :meth:`add_targets`).  ``rules`` maps a file name to the
    text of a rule file; :meth:`set_rules` adds more while running.
    ``alertmanagers`` are base URLs (more with :meth:`set_alertmanagers`).
    ``web_config`` is the content of ``--web.config.file`` (TLS, basic auth);
    ``ca_file`` verifies its certificate (default: the self-signed ``cert_file``).
    """

    binary_name = PROMETHEUS
    label = "prometheus"

    def __init__(
        self,
        *,
        jobs: Sequence[str] = ("engines",),
        scrape_interval: str = "1s",
        evaluation_interval: str = "1s",
        alert_resend_delay: str = "1s",
        rules: Mapping[str, str] | None = None,
        alertmanagers: Sequence[str] = (),
        web_config: Mapping[str, Any] | None = None,
        ca_file: Path | None = None,
        extra_args: Sequence[str] = (),
        binary: str | None = None,
        ready_timeout: float = 30.0,
        workdir: Path | None = None,
    ) -> None:
        super().__init__(binary=binary, ready_timeout=ready_timeout, workdir=workdir)
        self.jobs = tuple(jobs)
        self.scrape_interval = scrape_interval
        self.evaluation_interval = evaluation_interval
        self.alert_resend_delay = alert_resend_delay
        self.web_config = dict(web_config) if web_config is not None else None
        self.extra_args = tuple(extra_args)
        tls = (self.web_config or {}).get("tls_server_config")
        self._scheme = "https" if tls else "http"
        self.ca_file = ca_file or (Path(tls["cert_file"]) if tls and "cert_file" in tls else None)
        for job in self.jobs:
            (self.dir / "sd" / job).mkdir(parents=True, exist_ok=True)
        (self.dir / "sd" / "alertmanagers").mkdir(parents=True, exist_ok=True)
        (self.dir / "rules").mkdir(exist_ok=True)
        for name, text in (rules or {}).items():
            self._write_rules(name, text)
        if alertmanagers:
            self._write_alertmanagers(alertmanagers)

    @property
    def url(self) -> str:
        return f"{self._scheme}://{HOST}:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.dir / "prometheus.yml"

    def config(self) -> dict[str, Any]:
        """The prometheus.yml this server runs with."""
        sd = self.dir / "sd"
        refresh = {"refresh_interval": "1s"}
        return {
            "global": {
                "scrape_interval": self.scrape_interval,
                "scrape_timeout": self.scrape_interval,
                "evaluation_interval": self.evaluation_interval,
            },
            "rule_files": [str(self.dir / "rules" / "*.yml")],
            "alerting": {
                "alertmanagers": [
                    {
                        "api_version": "v2",
                        "file_sd_configs": [
                            {"files": [str(sd / "alertmanagers" / "*.json")], **refresh}
                        ],
                    }
                ]
            },
            "scrape_configs": [
                {
                    "job_name": job,
                    "file_sd_configs": [{"files": [str(sd / job / "*.json")], **refresh}],
                }
                for job in self.jobs
            ],
        }

    def _prepare(self) -> None:
        _write_atomic(self.config_path, yamlout.dump(self.config(), sort_keys=False))
        if self.web_config is not None:
            _write_atomic(self.dir / "web.yml", yamlout.dump(self.web_config))

    def _args(self) -> list[str]:
        args = [
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.dir / 'data'}",
            f"--web.listen-address={HOST}:{self.port}",
            "--web.enable-lifecycle",
            # Firing alerts are re-sent this often; the default (1m) would keep an alert
            # that fired before its Alertmanager was discovered away from it for a minute.
            f"--rules.alert.resend-delay={self.alert_resend_delay}",
            "--log.level=warn",
        ]
        if self.web_config is not None:
            args.append(f"--web.config.file={self.dir / 'web.yml'}")
        return [*args, *self.extra_args]

    def ssl_context(self) -> ssl.SSLContext | None:
        if self._scheme == "http":
            return None
        return ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)

    def _serves(self) -> bool:
        # /-/ready answers 503 until the TSDB is open; then a real query, over the same
        # scheme and CA the tests use (a TLS port that accepts connections is not enough).
        super()._serves()
        return bool(self.query("vector(1)")["result"])

    # -- targets
    def add_targets(
        self,
        job: str,
        group: str,
        targets: Iterable[str],
        labels: Mapping[str, str] | None = None,
    ) -> None:
        """Scrape ``targets`` (host:port) in ``job``, with extra target ``labels``.

        ``group`` names the file; writing the same group again replaces it.
        """
        if job not in self.jobs:
            raise ValueError(f"no scrape job {job!r}: this Prometheus has {list(self.jobs)}")
        entry = [{"targets": list(targets), "labels": dict(labels or {})}]
        _write_atomic(self.dir / "sd" / job / f"{group}.json", json.dumps(entry))

    def remove_targets(self, job: str, group: str) -> None:
        """Stop scraping the targets of ``group``."""
        (self.dir / "sd" / job / f"{group}.json").unlink(missing_ok=True)

    def set_alertmanagers(self, urls: Sequence[str]) -> None:
        """Send alerts to these Alertmanagers (base URLs), replacing the previous ones."""
        self._write_alertmanagers(urls)

    def _write_alertmanagers(self, urls: Sequence[str]) -> None:
        groups = [
            {"targets": [parts.netloc], "labels": {"__scheme__": parts.scheme}}
            for parts in map(urllib.parse.urlsplit, urls)
        ]
        _write_atomic(self.dir / "sd" / "alertmanagers" / "alertmanagers.json", json.dumps(groups))

    # -- rules
    def set_rules(self, name: str, text: str, *, reload: bool = True) -> None:
        """Add or replace the rule file ``name`` (YAML text) and reload if running."""
        self._write_rules(name, text)
        if reload and self.running:
            self.reload()

    def remove_rules(self, name: str, *, reload: bool = True) -> None:
        (self.dir / "rules" / f"{name}.yml").unlink(missing_ok=True)
        if reload and self.running:
            self.reload()

    def _write_rules(self, name: str, text: str) -> None:
        if "/" in name or name.startswith("."):
            raise ValueError(f"rule file name {name!r} must be a plain name")
        _write_atomic(self.dir / "rules" / f"{name}.yml", text)

    def reload(self) -> None:
        """Re-read the configuration and rule files (``POST /-/reload``); raises on a bad file."""
        http_json("POST", f"{self.url}/-/reload", context=self.ssl_context())

    # -- queries, for tests and the demo
    def api(self, path: str, **params: str) -> Any:
        """``GET /api/v1/<path>``; the ``data`` of a successful answer."""
        query = urllib.parse.urlencode(params)
        answer = http_json(
            "GET",
            f"{self.url}/api/v1/{path}" + (f"?{query}" if query else ""),
            context=self.ssl_context(),
        )
        if not isinstance(answer, dict) or answer.get("status") != "success":
            raise ServerError(f"/api/v1/{path}: {answer!r}")
        return answer["data"]

    def query(self, expr: str) -> Any:
        """An instant query; the ``data`` object (``resultType`` and ``result``)."""
        return self.api("query", query=expr)

    def active_targets(self, job: str | None = None) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.api("targets", state="active")["activeTargets"]
        return [t for t in found if job is None or t["labels"].get("job") == job]

    def wait_for_targets(
        self, job: str, targets: Iterable[str], *, health: str = "up", timeout: float = 30.0
    ) -> None:
        """Wait until ``targets`` (host:port) of ``job`` have been scraped with ``health``."""
        wanted = set(targets)

        def done() -> bool:
            seen = {
                t["labels"].get("instance")
                for t in self.active_targets(job)
                if t["health"] == health
            }
            return wanted <= seen

        wait_until(done, timeout=timeout, interval=0.1, what=f"targets {sorted(wanted)} {health}")


class DevAlertmanager(_Server):
    """A real Alertmanager that routes every alert to one webhook.

    ``webhook_url`` receives the v4 webhook payload, with ``Authorization:
    Bearer <webhook_token>`` when a token is given.  ``config`` replaces the
    generated configuration entirely.
    """

    binary_name = ALERTMANAGER
    label = "alertmanager"

    def __init__(
        self,
        *,
        webhook_url: str | None = None,
        webhook_token: str | None = None,
        group_by: Sequence[str] = ("alertname", "namespace", "stoppolicy"),
        group_wait: str = "0s",
        group_interval: str = "1s",
        repeat_interval: str = "1h",
        config: Mapping[str, Any] | None = None,
        binary: str | None = None,
        ready_timeout: float = 30.0,
        workdir: Path | None = None,
    ) -> None:
        super().__init__(binary=binary, ready_timeout=ready_timeout, workdir=workdir)
        if config is not None:
            self._config = dict(config)
            return
        receiver: dict[str, Any] = {"name": "webhook"}
        if webhook_url is not None:
            hook: dict[str, Any] = {"url": webhook_url, "send_resolved": True}
            if webhook_token is not None:
                token_file = self.dir / "webhook-token"
                token_file.write_text(webhook_token, encoding="utf-8")
                hook["http_config"] = {"authorization": {"credentials_file": str(token_file)}}
            receiver["webhook_configs"] = [hook]
        self._config = {
            "route": {
                "receiver": "webhook",
                "group_by": list(group_by),
                "group_wait": group_wait,
                "group_interval": group_interval,
                "repeat_interval": repeat_interval,
            },
            "receivers": [receiver],
        }

    @property
    def config_path(self) -> Path:
        return self.dir / "alertmanager.yml"

    def config(self) -> dict[str, Any]:
        return dict(self._config)

    def _prepare(self) -> None:
        _write_atomic(self.config_path, yamlout.dump(self._config, sort_keys=False))

    def _args(self) -> list[str]:
        return [
            f"--config.file={self.config_path}",
            f"--storage.path={self.dir / 'data'}",
            f"--web.listen-address={HOST}:{self.port}",
            "--cluster.listen-address=",  # no gossip port on 0.0.0.0
            "--log.level=warn",
        ]

    def _serves(self) -> bool:
        # Ready, and its API answers with the configuration it routes by.
        super()._serves()
        status = http_json("GET", f"{self.url}/api/v2/status", timeout=1.0)
        return isinstance(status, dict) and bool((status.get("config") or {}).get("original"))

    def post_alerts(self, alerts: Sequence[Mapping[str, Any]]) -> None:
        """Push alerts as Prometheus does (``POST /api/v2/alerts``)."""
        http_json("POST", f"{self.url}/api/v2/alerts", list(alerts))

    def alerts(self) -> list[dict[str, Any]]:
        """The alerts Alertmanager holds (``GET /api/v2/alerts``)."""
        found: list[dict[str, Any]] = http_json("GET", f"{self.url}/api/v2/alerts") or []
        return found


def promtool(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run ``promtool`` (e.g. ``check rules F``, ``test rules F``); never raises on its verdict."""
    path = find_binary(PROMTOOL)
    if path is None:
        raise ServerError("promtool is not installed: install the Debian package prometheus")
    return subprocess.run(
        [path, *args], capture_output=True, text=True, timeout=timeout, check=False, env=os.environ
    )
