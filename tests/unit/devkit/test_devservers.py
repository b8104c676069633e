"""Server fixtures return only when the server answers the way a test will use it.

A stand-in HTTPS server plays a Prometheus that is still starting (``/-/ready``
answers 503), then a ready one; readiness is checked over TLS with the CA, the
way the TLS Prometheus test queries it.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from stopbudget.devkit import servers


def _self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "tls.crt", directory / "tls.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


class _Starting:
    """A Prometheus look-alike whose readiness the test switches."""

    def __init__(self) -> None:
        self.ready = False
        self.paths: list[str] = []


@pytest.fixture
def starting_tls_server(tmp_path: Path) -> Iterator[tuple[_Starting, int, Path]]:
    if servers.find_binary("openssl") is None:
        pytest.skip("openssl not installed")
    cert, key = _self_signed(tmp_path)
    state = _Starting()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.paths.append(self.path.split("?")[0])
            if not state.ready:
                self.send_error(503, "Service Unavailable")
                return
            if self.path.startswith("/api/v1/query"):
                body = {"status": "success", "data": {"resultType": "vector", "result": [{}]}}
            else:
                body = "Prometheus Server is Ready.\n"
            raw = (json.dumps(body) if isinstance(body, dict) else body).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, server.server_address[1], cert
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_tls_prometheus_is_ready_only_when_it_answers_queries_over_tls(
    starting_tls_server: tuple[_Starting, int, Path], tmp_path: Path
) -> None:
    state, port, cert = starting_tls_server
    prom = servers.DevPrometheus(
        jobs=(),
        web_config={"tls_server_config": {"cert_file": str(cert), "key_file": "unused"}},
        binary="/bin/true",
        workdir=tmp_path / "prom",
    )
    prom.port = port
    assert prom.url.startswith("https://")
    # Accepting TLS connections is not readiness: /-/ready answers 503 while starting.
    assert not prom._ready()
    assert state.paths == ["/-/ready"]
    state.ready = True
    assert prom._ready()
    assert state.paths[-2:] == ["/-/ready", "/api/v1/query"]


def test_readiness_over_tls_verifies_the_certificate(
    starting_tls_server: tuple[_Starting, int, Path], tmp_path: Path
) -> None:
    state, port, _ = starting_tls_server
    state.ready = True
    other, _ = _self_signed(tmp_path)  # a CA that did not sign the server's certificate
    prom = servers.DevPrometheus(
        jobs=(),
        web_config={"tls_server_config": {"cert_file": "unused", "key_file": "unused"}},
        ca_file=other,
        binary="/bin/true",
        workdir=tmp_path / "prom",
    )
    prom.port = port
    assert not prom._ready()
