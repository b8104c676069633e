"""The parts of the engine loop that need no engine: the kubelet mirror and the counting."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from stopbudget.devkit.kubelet import ConfigMapMirror, ConfigMapVolume
from stopbudget.devkit.loadgen import EngineCounts, tokens_per_request
from stopbudget.gate.watcher import read_directory
from tests.support.waiting import wait_for


def test_the_mirror_writes_the_volume_when_the_data_changes(tmp_path: Path) -> None:
    data: dict[str, str] | None = {"default.output": "128"}
    failing = False
    lock = threading.Lock()

    def read() -> dict[str, str] | None:
        with lock:
            if failing:
                raise ConnectionError("the API server is away")
            return None if data is None else dict(data)

    volume = ConfigMapVolume(tmp_path / "budgets")
    with ConfigMapMirror(read, volume, interval=0.01) as mirror:
        assert (volume.dir / "default.output").read_text() == "128"
        with lock:
            data = {"default.output": "32", "long.output": "64"}
        wait_for(lambda: len(mirror.writes) == 2, 5, "the second write")
        assert (volume.dir / "long.output").read_text() == "64"
        with lock:
            failing = True  # a failed read keeps the last projection
        assert not mirror.sync()
        with lock:
            failing, data = False, None  # so does a ConfigMap that is gone
        assert not mirror.sync()
        with lock:
            data = {"default.output": "32", "long.output": "64"}
        assert not mirror.sync()  # unchanged: not rewritten
    assert mirror.writes == [
        {"default.output": "128"},
        {"default.output": "32", "long.output": "64"},
    ]
    assert sorted(p.name for p in volume.dir.iterdir() if not p.name.startswith("..")) == [
        "default.output",
        "long.output",
    ]
    # the gate reads what the mirror wrote
    assert read_directory(volume.dir) == {"default.output": b"32", "long.output": b"64"}


def counts(tokens: float, prompt: float, processing: float) -> EngineCounts:
    return EngineCounts(at=0.0, tokens=tokens, prompt=prompt, processing=processing, deferred=0)


def test_tokens_per_request_counts_finished_requests_only() -> None:
    # 9 prompt tokens a request: 3 started, 1 still in a slot -> 2 finished, 128 tokens.
    a = counts(tokens=0, prompt=0, processing=0)
    b = counts(tokens=128, prompt=27, processing=1)
    assert tokens_per_request(a, b, 9) == pytest.approx(64)
    assert tokens_per_request(b, b, 9) is None
