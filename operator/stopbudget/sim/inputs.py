"""The simulator's input files: a request trace and a per-question quality table.

Both are CSV.  Parsing works on text (``parse_trace``, ``parse_quality``), so
it is testable without files; ``load_trace`` and ``load_quality`` only add the
reading.  Every problem is an :class:`InputError` naming the file, the line
(1-based, the header is line 1) and the column (1-based, with its name), so a
bad file is fixed in one look.

Trace (the Azure LLM inference trace format)::

    TIMESTAMP,ContextTokens,GeneratedTokens
    2023-11-16 18:15:46.6805900,374,44

``TIMESTAMP`` is a UTC date and time (``YYYY-MM-DD HH:MM:SS[.fraction]``, ``T``
allowed as separator) or a number of seconds; ``ContextTokens`` and
``GeneratedTokens`` are whole numbers >= 0.  Other columns are ignored; rows
out of time order are sorted (stably).

Quality (the ``wide_*.csv`` format of data/quality/)::

    id,grading_no_think,reasoning_tokens_no_think,grading_budget256,reasoning_tokens_budget256,...

one row per question; for each setting ``S`` a ``grading_S`` column (``A``
correct, ``B`` wrong, ``C`` not attempted) and a ``reasoning_tokens_S`` column
(thinking tokens used, a whole number >= 0).  ``S`` is ``no_think`` (budget 0)
or ``budget<N>`` (budget N); any number of settings, in any order.  Other
columns (e.g. ``min_budget_correct``) are ignored.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

TRACE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
GRADES = {"A": True, "B": False, "C": False}

_STAMP_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:Z|\+00:?00)?$"
)
_SETTING_RE = re.compile(r"^(?:no_think|budget([0-9]+))$")
#: When a trace gives plain seconds, they count from this instant.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class InputError(ValueError):
    """A problem in an input file, at a line and column."""

    def __init__(self, source: str, line: int | None, column: int | None, message: str) -> None:
        self.source, self.line, self.column, self.message = source, line, column, message
        where = [f"line {line}"] if line is not None else []
        where += [f"column {column}"] if column is not None else []
        super().__init__(
            ": ".join([source, ", ".join(where), message] if where else [source, message])
        )


@dataclass(frozen=True)
class Trace:
    """Requests of a serving trace, in arrival order."""

    source: str
    #: Arrival time of the first request (UTC).
    start: datetime
    #: Seconds after ``start``, non-decreasing.
    arrivals: tuple[float, ...]
    context: tuple[int, ...]
    generated: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.arrivals)

    @property
    def duration(self) -> float:
        return self.arrivals[-1] if self.arrivals else 0.0

    def head(self, count: int) -> Trace:
        """The first ``count`` requests (for quick runs and tests)."""
        return Trace(
            self.source,
            self.start,
            self.arrivals[:count],
            self.context[:count],
            self.generated[:count],
        )


@dataclass(frozen=True)
class QualityTable:
    """Per-question outcomes at each budget of a ladder (the settings of the file)."""

    source: str
    ids: tuple[str, ...]
    #: Budgets of the settings, ascending (0 for no_think).
    levels: tuple[int, ...]
    #: Setting names, by level.
    settings: tuple[str, ...]
    #: ``correct[level][question]``: graded A.
    correct: tuple[tuple[bool, ...], ...]
    #: ``tokens[level][question]``: thinking tokens used.
    tokens: tuple[tuple[int, ...], ...]

    @property
    def questions(self) -> int:
        return len(self.ids)

    def accuracy(self, level: int) -> float:
        """Share of questions graded A at the ``level``-th setting."""
        return sum(self.correct[level]) / self.questions

    def mean_tokens(self, level: int) -> float:
        return sum(self.tokens[level]) / self.questions


# --------------------------------------------------------------------------- trace


def _whole(source: str, line: int, column: int, name: str, text: str) -> int:
    value = text.strip()
    if not value.isdigit():
        raise InputError(
            source, line, column, f"{name} {text!r} is not a whole number of tokens (>= 0)"
        )
    return int(value)


def _timestamp(source: str, line: int, column: int, text: str) -> datetime:
    value = text.strip()
    match = _STAMP_RE.match(value)
    if match is not None:
        year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
        fraction = match.group(7) or "0"
        try:
            moment = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
        except ValueError as exc:
            raise InputError(source, line, column, f"TIMESTAMP {text!r}: {exc}") from None
        return moment + timedelta(seconds=float("0." + fraction))
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not math.isfinite(seconds) or seconds < 0:
        raise InputError(
            source,
            line,
            column,
            f"TIMESTAMP {text!r} is not a time: write e.g. 2023-11-16 18:15:46.68 (UTC) "
            "or a number of seconds",
        )
    return EPOCH + timedelta(seconds=seconds)


def _header(source: str, rows: Iterable[list[str]]) -> tuple[list[str], Iterable[list[str]]]:
    iterator = iter(rows)
    try:
        header = next(iterator)
    except StopIteration:
        raise InputError(source, 1, None, "the file is empty: expected a CSV header") from None
    return [h.strip().lstrip("\ufeff") for h in header], iterator


def parse_trace(lines: Iterable[str], source: str = "trace") -> Trace:
    """A trace from CSV text lines; :class:`InputError` names the line and column of a problem."""
    reader = csv.reader(lines)
    try:
        header, rows = _header(source, reader)
        missing = [c for c in TRACE_COLUMNS if c not in header]
        if missing:
            raise InputError(
                source,
                1,
                None,
                f"missing column(s) {', '.join(missing)}: the header must name "
                f"{','.join(TRACE_COLUMNS)} (found {','.join(header) or 'nothing'})",
            )
        cols = [header.index(c) for c in TRACE_COLUMNS]
        width = max(cols) + 1
        records: list[tuple[datetime, int, int]] = []
        for row in rows:
            line = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) < width:
                missing_col = next(c for c in cols if c >= len(row))
                raise InputError(
                    source,
                    line,
                    missing_col + 1,
                    f"{header[missing_col]} is missing: the row has {len(row)} field(s), "
                    f"expected {len(header)}",
                )
            ts, ctx, gen = (row[c] for c in cols)
            records.append(
                (
                    _timestamp(source, line, cols[0] + 1, ts),
                    _whole(source, line, cols[1] + 1, "ContextTokens", ctx),
                    _whole(source, line, cols[2] + 1, "GeneratedTokens", gen),
                )
            )
    except csv.Error as exc:
        raise InputError(source, reader.line_num, None, f"not valid CSV: {exc}") from None
    if not records:
        raise InputError(source, 2, None, "no requests: the trace has a header but no rows")
    records.sort(key=lambda r: r[0])
    start = records[0][0]
    return Trace(
        source=source,
        start=start,
        arrivals=tuple((r[0] - start).total_seconds() for r in records),
        context=tuple(r[1] for r in records),
        generated=tuple(r[2] for r in records),
    )


# --------------------------------------------------------------------------- quality


def _setting_budget(name: str) -> int | None:
    match = _SETTING_RE.match(name)
    if match is None:
        return None
    return int(match.group(1)) if match.group(1) is not None else 0


class _Lines(Protocol):
    """A csv reader, for the number of the line it read last."""

    line_num: int


#: Per budget level: the setting's name, its grading column and its tokens column.
_Settings = dict[int, tuple[str, int, int]]


def parse_quality(lines: Iterable[str], source: str = "quality") -> QualityTable:
    """A quality table from CSV text lines; :class:`InputError` names line and column."""
    reader = csv.reader(lines)
    try:
        header, rows = _header(source, reader)
        if "id" not in header:
            raise InputError(
                source, 1, None, "missing column id: the first column names each question"
            )
        id_col = header.index("id")
        settings = _quality_settings(source, header)
        levels = sorted(settings)
        ids, correct, tokens = _quality_rows(source, reader, rows, header, id_col, settings)
    except csv.Error as exc:
        raise InputError(source, reader.line_num, None, f"not valid CSV: {exc}") from None
    if not ids:
        raise InputError(source, 2, None, "no questions: the file has a header but no rows")
    return QualityTable(
        source=source,
        ids=tuple(ids),
        levels=tuple(levels),
        settings=tuple(settings[b][0] for b in levels),
        correct=tuple(tuple(c) for c in correct),
        tokens=tuple(tuple(t) for t in tokens),
    )


# --------------------------------------------------------------------------- files


def _quality_settings(source: str, header: list[str]) -> _Settings:
    """The budget levels of a quality header: grading_<S> and reasoning_tokens_<S> pairs."""
    settings: _Settings = {}
    for col, name in enumerate(header):
        for prefix in ("grading_", "reasoning_tokens_"):
            if not name.startswith(prefix):
                continue
            setting = name.removeprefix(prefix)
            budget = _setting_budget(setting)
            if budget is None:
                raise InputError(
                    source,
                    1,
                    col + 1,
                    f"column {name!r}: setting {setting!r} is neither no_think nor "
                    "budget<N> (e.g. budget512)",
                )
            partner = ("reasoning_tokens_" if prefix == "grading_" else "grading_") + setting
            if partner not in header:
                raise InputError(
                    source, 1, col + 1, f"column {name!r} has no partner column {partner!r}"
                )
            if prefix == "grading_":
                if budget in settings:
                    raise InputError(
                        source,
                        1,
                        col + 1,
                        f"column {name!r}: budget {budget} is already given by "
                        f"grading_{settings[budget][0]}",
                    )
                settings[budget] = (setting, col, header.index(partner))
    if not settings:
        raise InputError(
            source,
            1,
            None,
            "no settings: expected columns grading_<S> and reasoning_tokens_<S> with S "
            "no_think or budget<N>",
        )
    return settings


def _quality_rows(
    source: str,
    reader: _Lines,
    rows: Iterable[list[str]],
    header: list[str],
    id_col: int,
    settings: _Settings,
) -> tuple[list[str], list[list[bool]], list[list[int]]]:
    """The question ids, and per level whether each answer was right and its tokens."""
    levels = sorted(settings)
    width = max(max(max(g, t) for _, g, t in settings.values()) + 1, id_col + 1)
    ids: list[str] = []
    correct: list[list[bool]] = [[] for _ in levels]
    tokens: list[list[int]] = [[] for _ in levels]
    seen: dict[str, int] = {}
    for row in rows:
        line = reader.line_num
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) < width:
            raise InputError(
                source,
                line,
                len(row) + 1,
                f"{header[len(row)]} is missing: the row has {len(row)} field(s), "
                f"expected {len(header)}",
            )
        qid = row[id_col].strip()
        if not qid:
            raise InputError(source, line, id_col + 1, "id is empty")
        if qid in seen:
            raise InputError(
                source, line, id_col + 1, f"id {qid!r} is repeated (first on line {seen[qid]})"
            )
        seen[qid] = line
        ids.append(qid)
        for i, budget in enumerate(levels):
            setting, g_col, t_col = settings[budget]
            grade = row[g_col].strip()
            if grade not in GRADES:
                raise InputError(
                    source,
                    line,
                    g_col + 1,
                    f"grading_{setting} {row[g_col]!r} is not A (correct), B (wrong) or "
                    "C (not attempted)",
                )
            correct[i].append(GRADES[grade])
            tokens[i].append(
                _whole(source, line, t_col + 1, f"reasoning_tokens_{setting}", row[t_col])
            )
    return ids, correct, tokens


def _read(path: Path) -> Sequence[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InputError(str(path), None, None, f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise InputError(str(path), None, None, f"not UTF-8 text: {exc.reason}") from None


def load_trace(path: str | Path) -> Trace:
    return parse_trace(_read(Path(path)), str(path))


def load_quality(path: str | Path) -> QualityTable:
    return parse_quality(_read(Path(path)), str(path))
