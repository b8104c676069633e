"""What kubelet does for the gate: a ConfigMap volume, and keeping it in step with the API.

:class:`ConfigMapVolume` writes a directory exactly as kubelet projects a
ConfigMap volume (its AtomicWriter): ``..<timestamp>/`` holds the files,
``..data`` is a symlink to it and each key is a symlink ``<key> -> ..data/<key>``.
An update writes a new timestamped directory, points a new symlink ``..data_tmp``
at it, renames that over ``..data`` (the atomic step), adds the symlinks of new
keys, removes those of deleted keys and then the old directory.

:class:`ConfigMapMirror` stands for kubelet's sync loop: a thread that reads the
ConfigMap's ``data`` from the API every ``interval`` seconds and rewrites the
volume when it changed (kubelet does the same on its sync period, about a minute
by default; here a fraction of a second, so that a test or the demo sees the
gate apply a budget the operator wrote at once).  Used by the engine tests and
``stopbudget demo --engine llamacpp``.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["ConfigMapMirror", "ConfigMapVolume"]

log = logging.getLogger(__name__)

_stamps = itertools.count(1)


class ConfigMapVolume:
    """One mounted ConfigMap; :meth:`write` replaces its data as kubelet does."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.keys: set[str] = set()

    def write(self, data: Mapping[str, str | bytes]) -> None:
        n = next(_stamps)
        stamp = f"..2026_12_02_01_{n // 60 % 60:02d}_{n % 60:02d}.{n:09d}"
        payload = self.dir / stamp
        payload.mkdir()
        for key, value in data.items():
            raw = value.encode() if isinstance(value, str) else value
            (payload / key).write_bytes(raw)
        data_link, tmp_link = self.dir / "..data", self.dir / "..data_tmp"
        old = os.readlink(data_link) if data_link.is_symlink() else None
        tmp_link.symlink_to(stamp)
        tmp_link.replace(data_link)  # the atomic swap
        for key in set(data) - self.keys:
            (self.dir / key).symlink_to(f"..data/{key}")
        for key in self.keys - set(data):
            (self.dir / key).unlink()
        self.keys = set(data)
        if old is not None:
            for child in (self.dir / old).iterdir():
                child.unlink()
            (self.dir / old).rmdir()


#: Reads the ConfigMap: its ``data``, or None when it does not exist (or cannot be read now).
DataReader = Callable[[], Mapping[str, str] | None]


class ConfigMapMirror:
    """A thread that keeps ``volume`` equal to the ConfigMap that ``read`` returns.

    ``writes`` lists every ``data`` written, in order (what the gate was shown).
    A ConfigMap that is gone, or a read that fails, leaves the volume as it is
    (kubelet keeps the last projection too).
    """

    def __init__(self, read: DataReader, volume: ConfigMapVolume, interval: float = 0.1) -> None:
        self.read = read
        self.volume = volume
        self.interval = interval
        self.writes: list[dict[str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kubelet-mirror", daemon=True)

    def sync(self) -> bool:
        """Read once and write the volume if the data changed; whether it was written."""
        try:
            data = self.read()
        except Exception as exc:  # noqa: BLE001 - a failed read is retried, as kubelet does
            log.debug("reading the ConfigMap failed: %s", exc)
            return False
        if data is None:
            return False
        current = dict(data)
        if self.writes and self.writes[-1] == current:
            return False
        self.volume.write(current)
        self.writes.append(current)
        return True

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sync()

    def start(self) -> Self:
        self.sync()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
