"""Durations as users write them (30s, 5m, 1h30m) and the bounds of duration fields."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any

from pydantic import (
    BeforeValidator,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    PlainSerializer,
    WithJsonSchema,
)
from pydantic_core import core_schema

# --------------------------------------------------------------------------- durations

_DURATION_PART = r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)"
#: Anchored pattern of a duration string such as ``30s``, ``5m``, ``1h30m`` or ``250ms``.
#: A subset of Go's ``time.ParseDuration`` syntax, so CEL's ``duration()`` accepts it too.
DURATION_PATTERN = rf"^({_DURATION_PART})+$"
_DURATION_RE = re.compile(DURATION_PATTERN)
_DURATION_PART_RE = re.compile(_DURATION_PART)
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> timedelta:
    """Parse ``30s``/``5m``/``1h30m``/``250ms`` into a timedelta; ValueError names the fix."""
    if not isinstance(text, str) or not _DURATION_RE.match(text):
        raise ValueError(
            f"{text!r} is not a duration: write a number followed by ms, s, m or h, "
            "e.g. 30s, 5m or 1h30m"
        )
    seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART_RE.findall(text))
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """The shortest duration string for ``value`` that :func:`parse_duration` reads back."""
    total_ms = round(value.total_seconds() * 1000)
    if total_ms == 0:
        return "0s"
    hours, rest = divmod(total_ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else ""]
    if millis and not (hours or minutes or seconds):
        parts.append(f"{millis}ms")
    elif millis:
        parts.append(f"{seconds}.{millis:03d}".rstrip("0") + "s")
    elif seconds:
        parts.append(f"{seconds}s")
    return "".join(parts)


def _to_duration(value: object) -> object:
    if isinstance(value, str):
        return parse_duration(value)
    if isinstance(value, timedelta):
        return value
    raise ValueError(
        f"{value!r} is not a duration: write a string such as 30s, 5m or 1h30m "
        "(a bare number is ambiguous)"
    )


Duration = Annotated[
    timedelta,
    BeforeValidator(_to_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN, "maxLength": 32}),
]


@dataclass(frozen=True)
class Within:
    """Bounds of a :data:`Duration` field, checked by pydantic and by a CEL rule in the CRD."""

    low: str
    high: str

    def _check(self, value: timedelta) -> timedelta:
        if not parse_duration(self.low) <= value <= parse_duration(self.high):
            raise ValueError(
                f"must be between {self.low} and {self.high}, got {format_duration(value)}"
            )
        return value

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> dict[str, Any]:
        json_schema = dict(handler(schema))
        json_schema["x-kubernetes-validations"] = [
            {
                "rule": f"duration(self) >= duration('{self.low}') && "
                f"duration(self) <= duration('{self.high}')",
                "message": f"must be a duration between {self.low} and {self.high}",
            }
        ]
        return json_schema
