"""The budgets in force, from the files of the budget directory. PURE.

The directory holds ``<class>.output`` and ``<class>.thinking`` files, each a
positive integer: what the operator's ``configMap`` sink writes (one key per
class and kind, default format ``{budget}``), mounted as a ConfigMap volume.
Other names are ignored (kubelet's ``..data`` and ``..2026_...`` entries too).

A request's class is the value of the class header, else ``default``.  Each
kind is looked up on its own: ``<class>.<kind>``, else ``default.<kind>``, else
no cap of that kind.  Metrics label a request with its class when the class
has a file of either kind, else ``default``, so a client cannot grow the label
set by sending new header values.

:func:`apply` turns what was read from the directory into the next
:class:`Snapshot`: a file that does not hold a positive integer keeps its last
good value and is reported once (again only when its problem changes); a file
that is gone takes its budget with it.

This module is pure: the watcher (:mod:`stopbudget.gate.watcher`) reads files.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from stopbudget.gate.caps import Caps, Kind

__all__ = [
    "DEFAULT_CLASS",
    "MAX_BUDGET",
    "MAX_FILE_BYTES",
    "Changed",
    "Event",
    "Invalid",
    "Key",
    "Snapshot",
    "Table",
    "apply",
    "parse_name",
    "parse_value",
]

DEFAULT_CLASS = "default"
#: The largest budget a file may hold (engines keep token counts in 32-bit integers).
MAX_BUDGET = 2**31 - 1
#: Budget files longer than this are not budgets (the watcher reads no more).
MAX_FILE_BYTES = 64

#: A file name: ``<class>.<kind>``; a class is a ConfigMap key without the kind.
_NAME = re.compile(r"^(?P<cls>[A-Za-z0-9_-][A-Za-z0-9._-]*)\.(?P<kind>output|thinking)$")
_DIGITS = re.compile(r"^[0-9]+$")


@dataclass(frozen=True, order=True)
class Key:
    """One budget: a class and a kind, read from the file ``<cls>.<kind>``."""

    cls: str
    kind: Kind

    @property
    def file(self) -> str:
        return f"{self.cls}.{self.kind.value}"


def parse_name(name: str) -> Key | None:
    """The budget a file name holds, or None for any other name."""
    match = _NAME.match(name)
    if match is None:
        return None
    return Key(match["cls"], Kind(match["kind"]))


def parse_value(raw: bytes) -> int:
    """A budget file's content as a budget; ValueError saying what is wrong and the fix."""
    if len(raw) > MAX_FILE_BYTES:
        raise ValueError(
            f"holds more than {MAX_FILE_BYTES} bytes: write a positive integer, e.g. 256"
        )
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ValueError("is not ASCII text: write a positive integer, e.g. 256") from None
    if not _DIGITS.match(text):
        shown = text[:20] or "(empty)"
        raise ValueError(
            f"holds {shown!r}, not a positive integer: write the budget alone, e.g. 256 "
            "(the configMap sink's default format {budget})"
        )
    value = int(text)
    if not 1 <= value <= MAX_BUDGET:
        raise ValueError(f"holds {value}: a budget is between 1 and {MAX_BUDGET}")
    return value


class Table:
    """The budgets in force; resolves a request's class to its caps (immutable)."""

    __slots__ = ("_caps", "values")

    def __init__(self, values: Mapping[Key, int] | None = None) -> None:
        self.values: Mapping[Key, int] = MappingProxyType(dict(values or {}))
        classes = {k.cls for k in self.values} | {DEFAULT_CLASS}
        self._caps = {
            c: Caps(self._lookup(c, Kind.OUTPUT), self._lookup(c, Kind.THINKING)) for c in classes
        }

    def _lookup(self, cls: str, kind: Kind) -> int | None:
        value = self.values.get(Key(cls, kind))
        return value if value is not None else self.values.get(Key(DEFAULT_CLASS, kind))

    def resolve(self, cls: str | None) -> tuple[str, Caps]:
        """``(label, caps)`` of a request whose class header is ``cls`` (None: absent)."""
        if cls is not None:
            caps = self._caps.get(cls)
            if caps is not None:
                return cls, caps
        return DEFAULT_CLASS, self._caps[DEFAULT_CLASS]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Table) and dict(self.values) == dict(other.values)

    def __hash__(self) -> int:
        return hash(frozenset(self.values.items()))

    def __repr__(self) -> str:
        shown = ", ".join(f"{k.file}={v}" for k, v in sorted(self.values.items()))
        return f"Table({shown})"


def _value(content: bytes | OSError) -> int:
    if isinstance(content, OSError):
        raise ValueError(f"cannot be read: {content.strerror or content}")  # noqa: TRY004
    return parse_value(content)


@dataclass(frozen=True)
class Changed:
    """A budget appeared (``old`` None), changed, or went away (``new`` None)."""

    key: Key
    old: int | None
    new: int | None


@dataclass(frozen=True)
class Invalid:
    """A budget file that holds no budget; ``kept`` is the value still in force."""

    key: Key
    problem: str
    kept: int | None


Event = Changed | Invalid


@dataclass(frozen=True)
class Snapshot:
    """The table in force and the problems already reported (to report each once)."""

    table: Table = field(default_factory=Table)
    reported: Mapping[Key, str] = field(default_factory=dict)


def apply(previous: Snapshot, files: Mapping[str, bytes | OSError]) -> tuple[Snapshot, list[Event]]:
    """The next snapshot from the directory's files (name -> content, or the read error).

    Names that are not budget files are ignored.  Events come in file-name order.
    """
    values: dict[Key, int] = {}
    reported: dict[Key, str] = {}
    events: list[Event] = []
    old = previous.table.values
    read = {key: files[name] for name in sorted(files) if (key := parse_name(name)) is not None}
    for key, content in read.items():
        try:
            values[key] = _value(content)
        except ValueError as exc:
            problem = str(exc)
            reported[key] = problem
            if key in old:
                values[key] = old[key]
            if previous.reported.get(key) != problem:
                events.append(Invalid(key, problem, values.get(key)))
            continue
        if old.get(key) != values[key]:
            events.append(Changed(key, old.get(key), values[key]))
    events += [Changed(key, value, None) for key, value in sorted(old.items()) if key not in read]
    table = previous.table if values == dict(old) else Table(values)
    return Snapshot(table, MappingProxyType(reported)), events
