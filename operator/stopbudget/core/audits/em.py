"""Exact Match (EM) of a model output against gold answers. PURE: no I/O, no clock.

One output is scored in three steps:

1. :func:`strip_reasoning` removes ``<think>...</think>`` blocks.  An unclosed
   ``<think>`` hides everything after it (the model was still reasoning when it
   stopped, so nothing after it is an answer); a ``</think>`` without an
   opening tag (chat templates that open the block in the prompt) hides
   everything before it.
2. :func:`extract_answer` takes the answer: with the policy's ``answerPattern``,
   the first capture group of the LAST match; without one, the final non-empty
   line.  An output *cut* by the budget (``finish_reason: length``, or a prefix
   shorter than the whole output) is judged more strictly, because its end is
   where the budget stopped the model, not where the model chose to stop:

   * without a pattern it has no answer: its last line is not the model's last
     line;
   * with a pattern, a match whose answer runs to the very end of the output is
     not trusted (``answer is 1`` may be ``answer is 18`` cut in half); an
     earlier match is used instead.

   No extractable answer in a cut output is what an audit counts as
   ``truncated``.
3. :func:`exact_match` compares the answer with every gold answer and takes the
   best.

Normalisation is the SQuAD v1.1 ``normalize_answer``: lowercase, drop ASCII
punctuation (``string.punctuation``), drop the articles a/an/the as whole words,
collapse whitespace.  Two additions, both documented rules:

* **Numbers.**  When the answer and a gold answer both read as a number, they
  are compared as numbers: an optional sign, an optional ``$``, digits with
  optional thousands separators (``1,000``), an optional fraction, an optional
  ``%`` and one optional sentence-ending period.  So ``18`` matches ``18.0``,
  ``$18`` and ``18.``; ``18,000`` matches ``18000``; but ``1.5`` does not
  match ``15`` nor ``-5`` match ``5``, which punctuation removal alone would
  accept.  When either side is not a number, SQuAD normalisation decides.
* **Unicode.**  Both sides are NFC-normalised first, so a composed and a
  decomposed ``é`` agree.  An answer that normalises to nothing (``"the"``,
  ``"..."``) matches nothing.

GSM8K gold answers end in ``#### 18``; :func:`parse_gold` reads them as ``18``.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

__all__ = [
    "Score",
    "exact_match",
    "extract_answer",
    "normalize_answer",
    "parse_gold",
    "parse_number",
    "score",
    "strip_reasoning",
]

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_THINK_OPEN = re.compile(r"<think>", re.IGNORECASE)
_THINK_CLOSE = re.compile(r"</think>", re.IGNORECASE)
_NUMBER = re.compile(
    r"^(?P<sign>[-+]?)\$?(?P<int>\d{1,3}(?:,\d{3})+|\d*)(?P<frac>\.\d+)?%?\.?$",
)
_GSM8K_MARK = "####"


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normalisation: lowercase, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def parse_number(text: str) -> Decimal | None:
    """``text`` as a number under the rule in the module docstring, or None."""
    match = _NUMBER.match(text.strip())
    if match is None or not (match["int"] or match["frac"]):
        return None
    digits = match["sign"] + (match["int"] or "0").replace(",", "") + (match["frac"] or "")
    try:
        return Decimal(digits)
    except InvalidOperation:  # pragma: no cover - the pattern only admits valid digits
        return None


def _same(prediction: str, gold: str) -> bool:
    prediction = unicodedata.normalize("NFC", prediction)
    gold = unicodedata.normalize("NFC", gold)
    p_num, g_num = parse_number(prediction), parse_number(gold)
    if p_num is not None and g_num is not None:
        return p_num == g_num
    normalized = normalize_answer(prediction)
    return bool(normalized) and normalized == normalize_answer(gold)


def exact_match(prediction: str, golds: Sequence[str]) -> bool:
    """Whether ``prediction`` equals any of ``golds`` after normalisation (max over golds)."""
    if isinstance(golds, str):
        raise TypeError("golds must be a sequence of answers, not one string")
    return any(_same(prediction, gold) for gold in golds)


def parse_gold(answer: str) -> str:
    """A gold answer as written in a golden set: GSM8K's ``"... #### 18"`` is ``"18"``."""
    if _GSM8K_MARK in answer:
        return answer.rsplit(_GSM8K_MARK, 1)[1].strip()
    return answer.strip()


def strip_reasoning(text: str) -> str:
    """``text`` without its ``<think>`` reasoning (see the module docstring)."""
    text = _THINK_BLOCK.sub("", text)
    closes = list(_THINK_CLOSE.finditer(text))
    if closes:
        text = text[closes[-1].end() :]
    opened = _THINK_OPEN.search(text)
    if opened:
        text = text[: opened.start()]
    return text


def extract_answer(
    text: str, pattern: str | re.Pattern[str] | None = None, *, cut: bool = False
) -> str | None:
    """The answer in a model output, or None when it has none.

    ``pattern``: the answer is the first capture group of the last match;
    without it, the final non-empty line.  ``cut``: the output was stopped by
    the budget (see the module docstring for how that changes extraction).
    """
    body = strip_reasoning(text)
    if pattern is not None:
        compiled = re.compile(pattern) if isinstance(pattern, str) else pattern
        if compiled.groups < 1:
            raise ValueError(f"answer pattern {compiled.pattern!r} has no capture group")
        for match in reversed(list(compiled.finditer(body))):
            answer = match.group(1)
            if answer is None or not answer.strip():
                continue
            if cut and match.end(1) >= len(body):
                continue  # runs to where the budget stopped the model: maybe cut in half
            return answer.strip()
        return None
    if cut:
        return None
    for line in reversed(body.splitlines()):
        if line.strip():
            return line.strip()
    return None


@dataclass(frozen=True)
class Score:
    """How one output scored."""

    answer: str | None
    """The extracted answer, None when there is none."""
    hit: bool
    """Exact match with one of the golds."""
    truncated: bool
    """Cut by the budget with no extractable answer."""


def score(
    output: str,
    golds: Sequence[str],
    *,
    pattern: str | re.Pattern[str] | None = None,
    cut: bool = False,
) -> Score:
    """Extract the answer from ``output`` and match it against ``golds``."""
    answer = extract_answer(output, pattern, cut=cut)
    hit = answer is not None and exact_match(answer, golds)
    return Score(answer=answer, hit=hit, truncated=cut and answer is None)
