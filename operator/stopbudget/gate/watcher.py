"""Reads the budget directory and keeps the budgets in force up to date. I/O.

A ConfigMap volume is a directory of symlinks: ``<key> -> ..data/<key>`` and
``..data -> ..2026_01_02_03_04_05.123456789``, a folder holding the files.
kubelet updates it by writing a new timestamped folder and renaming a new
``..data`` symlink over the old one, so a file read through ``<key>`` is always
whole, old or new.  The watcher polls every :data:`POLL_INTERVAL` seconds (far
below the 1 s a change must take to apply), reads every budget file (a few
bytes each), and swaps in the new :class:`~stopbudget.gate.budgets.Table`; a
request reads the table once, so requests in flight are untouched by a swap.

A file that vanishes between the listing and the read (kubelet removing a key)
counts as gone; a directory that cannot be listed any more keeps the last
budgets and is logged once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from stopbudget.gate import budgets
from stopbudget.gate.budgets import Changed, Event, Invalid, Snapshot, Table

__all__ = ["POLL_INTERVAL", "BudgetWatcher", "read_directory"]

log = logging.getLogger(__name__)

#: Seconds between two reads of the directory.
POLL_INTERVAL = 0.2


def read_directory(directory: Path) -> dict[str, bytes | OSError]:
    """Every budget file of ``directory``: its first bytes, or the error reading it.

    Raises OSError when the directory itself cannot be listed.
    """
    found: dict[str, bytes | OSError] = {}
    for name in os.listdir(directory):
        if budgets.parse_name(name) is None:
            continue
        try:
            with (directory / name).open("rb") as handle:
                found[name] = handle.read(budgets.MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            continue  # removed since the listing, or a dangling link mid-update
        except OSError as exc:
            found[name] = exc
    return found


class BudgetWatcher:
    """The budgets of one directory; :attr:`table` is always the one in force."""

    def __init__(
        self,
        directory: Path,
        *,
        interval: float = POLL_INTERVAL,
        on_event: Callable[[Event], None] | None = None,
    ) -> None:
        self.directory = directory
        self.interval = interval
        self.on_event = on_event
        self.snapshot = Snapshot()
        self.reads = 0
        self._directory_problem: str | None = None

    @property
    def table(self) -> Table:
        return self.snapshot.table

    def load(self) -> None:
        """Read the directory once, now (blocking; for start-up and tests)."""
        self._update(self._read())

    def _read(self) -> dict[str, bytes | OSError] | None:
        try:
            files = read_directory(self.directory)
        except OSError as exc:
            problem = f"cannot list the budget directory {self.directory}: {exc.strerror or exc}"
            if problem != self._directory_problem:
                log.error("%s; keeping the budgets in force", problem)  # noqa: TRY400
                self._directory_problem = problem
            return None
        self._directory_problem = None
        return files

    def _update(self, files: dict[str, bytes | OSError] | None) -> None:
        self.reads += 1
        if files is None:
            return
        self.snapshot, events = budgets.apply(self.snapshot, files)
        for event in events:
            _log(event)
            if self.on_event is not None:
                self.on_event(event)

    async def run(self) -> None:
        """Poll until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            self._update(await asyncio.to_thread(self._read))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Poll in a task while the block runs."""
        task = asyncio.create_task(self.run(), name=f"budget-watcher {self.directory}")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _log(event: Event) -> None:
    if isinstance(event, Invalid):
        kept = "no budget" if event.kept is None else f"keeping {event.kept}"
        log.warning("budget file %s %s; %s", event.key.file, event.problem, kept)
    elif isinstance(event, Changed):
        old = "none" if event.old is None else event.old
        new = "none" if event.new is None else event.new
        log.info("budget %s: %s -> %s", event.key.file, old, new)
