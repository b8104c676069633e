"""YAML that Go's YAML 1.1 parsers read exactly as Python's do. PURE: no I/O.

kubectl, Helm and client-go read YAML with a YAML 1.1 resolver (go-yaml v2
through sigs.k8s.io/yaml): a plain ``n`` or ``y`` is a boolean there, ``1e3``
a float, ``0o17`` an int and ``2023-1-2`` a timestamp, while PyYAML reads all
four as strings, so ``yaml.safe_dump`` writes them unquoted.  The committed
CRD once carried the property ``n``, which the API server read as ``false``.

:class:`Dumper` is PyYAML's safe dumper with one change: a string that any
YAML 1.1 or 1.2 parser could read as something else (:func:`ambiguous`) is
always written single-quoted, as a key or as a value.  Every generator of
YAML the project ships or hands to a Go program uses :func:`dump`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import yaml

#: Booleans of YAML 1.1 (go-yaml v2's table; PyYAML's lacks y, Y, n and N).
BOOLEANS = frozenset(
    {"y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "true", "True", "TRUE"}
    | {"false", "False", "FALSE", "on", "On", "ON", "off", "Off", "OFF"}
)
#: Nulls of YAML 1.1 and 1.2 (the empty string included).
NULLS = frozenset({"", "~", "null", "Null", "NULL"})

_SIGN = r"[-+]?"
_INT = (
    _SIGN + r"(?:0[bB][01_]+"  # binary
    r"|0[oO][0-7_]+"  # YAML 1.2 / Go octal
    r"|0[xX][0-9a-fA-F_]+"  # hex
    r"|[0-9][0-9_]*"  # decimal, and YAML 1.1 octal 017
    r"|[1-9][0-9_]*(?::[0-5]?[0-9])+)"  # sexagesimal 1:20
)
_FLOAT = (
    _SIGN + r"(?:(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)(?:[eE][-+]?[0-9]+)?"  # 1.5 .5 1e3
    r"|[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*"  # sexagesimal 190:20:30.15
    r"|\.(?:inf|Inf|INF)"
    r"|\.(?:nan|NaN|NAN))"
)
# YAML 1.1 timestamps, and Go's looser dates such as 2023-1-2 (one-digit month and day).
_TIMESTAMP = r"[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}(?:(?:[Tt]|[ \t]+).*)?"
_OTHER = r"<<|="  # the merge key and PyYAML's value key
_AMBIGUOUS = re.compile(rf"(?:{_INT}|{_FLOAT}|{_TIMESTAMP}|{_OTHER})", re.DOTALL)


def ambiguous(text: str) -> bool:
    """Whether a YAML 1.1 or 1.2 parser could read the plain scalar ``text`` as a non-string.

    True for booleans (``y``, ``n``, ``yes``, ``off``, ...), nulls (``~``,
    ``null``, the empty string), ints (``12``, ``0x1F``, ``0o17``, ``017``,
    ``0b101``, ``1_000``, ``1:20``), floats (``1.5``, ``.5``, ``1e3``, ``.inf``,
    ``.nan``, ``190:20:30.15``), timestamps (``2023-11-16``) and the merge key.
    Quoting a string that is not ambiguous is harmless; leaving one unquoted is
    not, so the patterns are the union of both versions and of go-yaml's.
    """
    return text in BOOLEANS or text in NULLS or _AMBIGUOUS.fullmatch(text) is not None


class Dumper(yaml.SafeDumper):
    """``yaml.SafeDumper`` that single-quotes every :func:`ambiguous` string, keys included."""


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    if ambiguous(data):
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="'")
    return dumper.represent_str(data)


Dumper.add_representer(str, _represent_str)


def dump(data: Any, **options: Any) -> str:
    """``yaml.safe_dump(data, **options)`` through :class:`Dumper`."""
    text: str = yaml.dump(data, Dumper=Dumper, **options)
    return text


_STR = "tag:yaml.org,2002:str"


def plain_ambiguous_strings(text: str) -> list[str]:
    """The unquoted scalars of ``text`` that PyYAML reads as strings and another parser may not.

    Each is a place where kubectl or Helm may read something else than PyYAML
    (``n`` as false, ``1e3`` as a number); an empty list means every string
    of ``text`` is read as a string by both.
    """
    resolve: Callable[..., str] = yaml.resolver.Resolver().resolve
    return [
        event.value
        for event in yaml.parse(text, Loader=yaml.SafeLoader)
        if isinstance(event, yaml.ScalarEvent)
        and not event.style
        and resolve(yaml.ScalarNode, event.value, (True, False)) == _STR
        and ambiguous(event.value)
    ]
