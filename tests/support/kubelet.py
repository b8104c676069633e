"""A ConfigMap volume written the way kubelet writes it (its AtomicWriter), for the gate's tests.

The volume directory holds ``..<timestamp>/`` (the files), ``..data`` (a symlink
to it) and one symlink per key, ``<key> -> ..data/<key>``.  An update writes a
new timestamped directory, points a new symlink ``..data_tmp`` at it, renames
that over ``..data`` (the atomic step), adds the symlinks of new keys, removes
those of deleted keys and then the old directory.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping
from pathlib import Path

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
