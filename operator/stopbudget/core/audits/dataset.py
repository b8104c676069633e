"""The golden QA set: JSONL text (a ConfigMap key or a file), checked and sampled. PURE.

One JSON object per line::

    {"question": "How many ...?", "answers": ["18", "eighteen"]}
    {"prompt": "Q: ...\\nA:", "answer": "Janet sells ... #### 18"}

* the text sent to the model is ``"question"`` or ``"prompt"`` (exactly one of
  them, a non-empty string);
* the accepted answers are ``"answers"`` (a non-empty list of non-empty
  strings) or ``"answer"`` (one string, or a JSON number read as its text).
  GSM8K's ``"... #### 18"`` is read as ``18``
  (:func:`stopbudget.core.audits.em.parse_gold`);
* other keys (``id``, ``source``, ...) are allowed and ignored;
* blank lines are skipped; line numbers in errors count every line.

Every problem is reported with its line number, several at once
(:class:`DatasetError`), so a bad ConfigMap is fixed in one edit.

Sampling is deterministic and independent of the Python version: each item's
rank is the SHA-256 of the seed and the item's content, and the sample is the
``size`` items of lowest rank, in file order.  The same seed and the same file
give the same sample everywhere; appending items to the file keeps most of an
old sample (an item is in it or not by its own rank, not by its position).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stopbudget.core.audits.em import parse_gold

__all__ = [
    "MAX_BYTES",
    "MAX_ITEMS",
    "DatasetError",
    "GoldenItem",
    "check_configmap",
    "from_configmap",
    "parse_golden",
    "sample",
]

#: Largest golden set read, in bytes of UTF-8 text (a ConfigMap holds at most 1 MiB).
MAX_BYTES = 16 * 1024 * 1024
#: Most items read (``audit.sampleSize`` is at most 100 000 too).
MAX_ITEMS = 100_000
#: Most problems listed in one error; the rest are counted.
MAX_REPORTED = 20


@dataclass(frozen=True)
class GoldenItem:
    """One question of the golden set."""

    question: str
    """The text sent to the model (``question`` or ``prompt``)."""
    answers: tuple[str, ...]
    """Accepted answers, GSM8K ``####`` answers already parsed."""
    line: int = 0
    """Line of the JSONL it came from (1-based; 0 when built in code)."""


class DatasetError(ValueError):
    """A golden set that cannot be used; ``problems`` lists each as ``line N: what``."""

    def __init__(self, problems: Sequence[str], more: int = 0) -> None:
        self.problems = list(problems)
        self.more = more
        text = "; ".join(self.problems)
        if more:
            text += f"; and {more} more problem{'s' if more > 1 else ''}"
        super().__init__(text)


def _item(obj: Any) -> tuple[GoldenItem | None, list[str]]:
    """The item of one parsed line, or what is wrong with it (without the line number)."""
    if not isinstance(obj, dict):
        return None, [f"expected a JSON object, got {type(obj).__name__}"]
    problems: list[str] = []
    question: str | None = None
    present = [k for k in ("question", "prompt") if k in obj]
    if not present:
        problems.append('missing "question" or "prompt"')
    elif len(present) == 2:
        problems.append('has both "question" and "prompt": keep one')
    else:
        value = obj[present[0]]
        if not isinstance(value, str):
            problems.append(f'"{present[0]}" must be a string, got {type(value).__name__}')
        elif not value.strip():
            problems.append(f'"{present[0]}" is empty')
        else:
            question = value
    answers: list[str] = []
    if "answers" in obj and "answer" in obj:
        problems.append('has both "answers" and "answer": keep one')
    elif "answers" in obj:
        value = obj["answers"]
        if not isinstance(value, list) or not value:
            problems.append('"answers" must be a non-empty list of strings')
        else:
            for i, a in enumerate(value):
                if not isinstance(a, str):
                    problems.append(f'"answers"[{i}] must be a string, got {type(a).__name__}')
                elif not parse_gold(a):
                    problems.append(f'"answers"[{i}] is empty')
                else:
                    answers.append(parse_gold(a))
    elif "answer" in obj:
        value = obj["answer"]
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)  # {"answer": 18} means "18"
        if not isinstance(value, str):
            problems.append(f'"answer" must be a string, got {type(value).__name__}')
        elif not parse_gold(value):
            problems.append('"answer" is empty')
        else:
            answers.append(parse_gold(value))
    else:
        problems.append('missing "answers" (a list) or "answer"')
    if problems or question is None:
        return None, problems
    return GoldenItem(question=question, answers=tuple(answers)), []


def parse_golden(
    text: str, *, max_bytes: int = MAX_BYTES, max_items: int = MAX_ITEMS
) -> list[GoldenItem]:
    """Every item of a golden set in JSONL; :class:`DatasetError` lists what is wrong."""
    size = len(text.encode("utf-8"))
    if size > max_bytes:
        raise DatasetError(
            [f"the golden set is {size} bytes, more than the limit of {max_bytes}: sample it down"]
        )
    items: list[GoldenItem] = []
    problems: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"line {number}: not valid JSON: {exc.msg} (column {exc.colno})")
            continue
        item, found = _item(obj)
        problems += [f"line {number}: {p}" for p in found]
        if item is not None:
            items.append(GoldenItem(item.question, item.answers, number))
            if len(items) > max_items:
                raise DatasetError(
                    [
                        f"line {number}: more than {max_items} items, the limit: "
                        "split the golden set or sample it down"
                    ]
                )
    if problems:
        raise DatasetError(problems[:MAX_REPORTED], more=max(0, len(problems) - MAX_REPORTED))
    if not items:
        raise DatasetError(["no items: write one JSON object per line"])
    return items


def _rank(item: GoldenItem, seed: int) -> bytes:
    content = json.dumps([seed, item.question, list(item.answers)], ensure_ascii=True)
    return hashlib.sha256(content.encode("ascii")).digest()


def sample(items: Sequence[GoldenItem], size: int, seed: int) -> list[GoldenItem]:
    """``size`` items chosen by ``seed``, deterministically (see the module docstring).

    All items, in order, when there are no more than ``size``.
    """
    if size < 1:
        raise ValueError(f"sample size must be at least 1, got {size}")
    if len(items) <= size:
        return list(items)
    ranked = sorted(range(len(items)), key=lambda i: (_rank(items[i], seed), i))
    return [items[i] for i in sorted(ranked[:size])]


def from_configmap(configmap: Mapping[str, Any], key: str) -> list[GoldenItem]:
    """The golden set in ``key`` of a ConfigMap (as the Kubernetes API returns it)."""
    data = configmap.get("data") or {}
    if not isinstance(data, Mapping):
        raise DatasetError(["data: must be a mapping of keys to text"])
    if key not in data:
        keys = ", ".join(sorted(map(str, data))) or "none"
        where = "binaryData" if key in (configmap.get("binaryData") or {}) else None
        hint = f" (it is in {where}: store the JSONL as text in data)" if where else ""
        raise DatasetError([f"data: no key {key!r}{hint}; keys: {keys}"])
    value = data[key]
    if not isinstance(value, str):
        raise DatasetError([f"data.{key}: must be text, got {type(value).__name__}"])
    try:
        return parse_golden(value)
    except DatasetError as exc:
        raise DatasetError([f"data.{key}: {p}" for p in exc.problems], exc.more) from None


def check_configmap(doc: Mapping[str, Any], key: str | None = None) -> list[tuple[str, str]]:
    """Problems of a ConfigMap holding a golden set, as ``(path, message)`` pairs.

    ``key`` names the key to check; without it every key ending in ``.jsonl``
    is checked.  Paths are ``data.<key>`` and messages start with the line:
    ``("data.golden.jsonl", "line 3: missing \\"question\\" or \\"prompt\\"")``.
    """
    if doc.get("kind") != "ConfigMap" or doc.get("apiVersion") != "v1":
        return [("kind", f"{doc.get('apiVersion')}/{doc.get('kind')} is not a v1 ConfigMap")]
    data = doc.get("data") or {}
    if not isinstance(data, Mapping):
        return [("data", "must be a mapping of keys to text")]
    keys = [key] if key is not None else sorted(k for k in map(str, data) if k.endswith(".jsonl"))
    if not keys:
        return [
            ("data", "no key ending in .jsonl: a golden set is JSONL in a key such as golden.jsonl")
        ]
    problems: list[tuple[str, str]] = []
    for k in keys:
        if k not in data:
            problems.append(("data", f"no key {k!r}"))
            continue
        value = data[k]
        if not isinstance(value, str):
            problems.append((f"data.{k}", f"must be text, got {type(value).__name__}"))
            continue
        try:
            parse_golden(value)
        except DatasetError as exc:
            problems += [(f"data.{k}", p) for p in exc.problems]
            if exc.more:
                problems.append((f"data.{k}", f"and {exc.more} more problems"))
    return problems
