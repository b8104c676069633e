"""Exact Match: SQuAD v1.1 normalisation, the number rule, answer extraction, GSM8K golds."""

from __future__ import annotations

import json
import re
import string
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stopbudget.core.audits import em

GSM8K = Path(__file__).resolve().parents[4] / "data" / "golden" / "gsm8k_test.jsonl"


def gsm8k_line(number: int) -> dict[str, str]:
    """Line ``number`` (1-based) of the real GSM8K test set."""
    with GSM8K.open(encoding="utf-8") as lines:
        for i, line in enumerate(lines, start=1):
            if i == number:
                data: dict[str, str] = json.loads(line)
                return data
    raise AssertionError(f"no line {number}")


def squad_reference(s: str) -> str:
    """The official SQuAD v1.1 evaluate-v1.1.py normalize_answer, step by step."""
    lowered = s.lower()
    no_punc = "".join(ch for ch in lowered if ch not in set(string.punctuation))
    no_articles = re.sub(r"\b(a|an|the)\b", " ", no_punc)
    return " ".join(no_articles.split())


# ------------------------------------------------------------------ normalize_answer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Cat!", "cat"),
        ("  A  an the  ", ""),
        ("an apple a day", "apple day"),
        ("theory anthem", "theory anthem"),  # articles only as whole words
        ("THE END.", "end"),
        ("t.he cat", "cat"),  # punctuation goes first, then the article
        ("a\tb\nc", "b c"),
        ("Ça va?", "ça va"),
        ("Über-Fahrt", "überfahrt"),
        ("‘quoted’ «x»", "‘quoted’ «x»"),  # only ASCII punctuation is removed
        ("1,000", "1000"),
        ("$18.00", "1800"),
        ("", ""),
        ("日本の首都は東京", "日本の首都は東京"),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert em.normalize_answer(text) == expected


@given(st.text())
def test_normalize_answer_is_the_squad_one_and_idempotent(text: str) -> None:
    normalized = em.normalize_answer(text)
    assert normalized == squad_reference(text)
    assert em.normalize_answer(normalized) == normalized


# ------------------------------------------------------------------ exact_match


@pytest.mark.parametrize(
    ("prediction", "golds", "expected"),
    [
        ("Paris", ["paris"], True),
        ("The Eiffel Tower.", ["Eiffel Tower"], True),
        ("Eiffel", ["Eiffel Tower"], False),
        ("Lyon", ["Paris", "Lyon", "Marseille"], True),  # max over the golds
        ("Nice", ["Paris", "Lyon"], False),
        ("Paris", [], False),
        ("", ["Paris"], False),
        ("", [""], False),  # an answer that normalises to nothing matches nothing
        ("the", ["a"], False),
        ("...", ["!"], False),
        ("café", [unicodedata.normalize("NFD", "café")], True),  # NFC on both sides
        ("CAFÉ", ["café"], True),
        ("cafe", ["café"], False),
        # the number rule
        ("18", ["18"], True),
        ("18.0", ["18"], True),
        ("18.", ["18"], True),
        ("$18", ["18"], True),
        ("$18.00", ["18"], True),
        ("18,000", ["18000"], True),
        ("18000", ["18,000"], True),
        ("1,450,000", ["1450000"], True),
        ("50%", ["50"], True),
        ("-5", ["-5"], True),
        ("-5", ["5"], False),  # punctuation removal alone would accept it
        ("1.5", ["15"], False),  # idem
        ("0.5", [".5"], True),
        ("18 dollars", ["18"], False),  # not a number: SQuAD decides, and it differs
        ("12,34", ["1234"], True),  # not a well-formed number: SQuAD normalisation decides
        ("eighteen", ["18"], False),
    ],
)
def test_exact_match(prediction: str, golds: list[str], expected: bool) -> None:
    assert em.exact_match(prediction, golds) is expected


def test_exact_match_wants_a_list_of_golds() -> None:
    with pytest.raises(TypeError, match="sequence of answers"):
        em.exact_match("18", "18")


@given(st.text(), st.lists(st.text(), max_size=3))
def test_exact_match_is_the_max_over_golds(prediction: str, golds: list[str]) -> None:
    assert em.exact_match(prediction, golds) == any(em.exact_match(prediction, [g]) for g in golds)


# ------------------------------------------------------------------ GSM8K golds


@pytest.mark.parametrize(
    ("line", "gold", "right", "wrong"),
    [
        (1, "18", ["18", "$18", "18.0", " 18 "], ["17", "180", "1.8"]),
        (2, "3", ["3", "3."], ["2"]),
        (3, "70000", ["70000", "70,000", "$70,000"], ["7000", "700,00x"]),
        (147, "2,125", ["2125", "2,125", "$2,125.00"], ["2,12", "212"]),
        (490, "-10", ["-10", "-10.0"], ["10"]),
        (612, "1,450,000", ["1450000", "$1,450,000"], ["145000"]),
    ],
)
def test_gsm8k_golds(line: int, gold: str, right: list[str], wrong: list[str]) -> None:
    parsed = em.parse_gold(gsm8k_line(line)["answer"])
    assert parsed == gold
    for answer in right:
        assert em.exact_match(answer, [parsed]), answer
    for answer in wrong:
        assert not em.exact_match(answer, [parsed]), answer


@pytest.mark.parametrize(
    ("answer", "gold"),
    [("#### 18", "18"), ("so 9*2=18\n#### 18 ", "18"), ("18", "18"), (" Paris ", "Paris")],
)
def test_parse_gold(answer: str, gold: str) -> None:
    assert em.parse_gold(answer) == gold


# ------------------------------------------------------------------ think blocks


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>hmm, 17?</think>\n18", "\n18"),
        ("<think>a</think>b<think>c</think>d", "bd"),
        ("<THINK>x</THINK>y", "y"),
        ("<think>still reasoning when the budget ran o", ""),  # unclosed: no answer
        ("answer 18 <think>more", "answer 18 "),
        ("reasoning the template opened</think>\n18", "\n18"),  # stray close
        ("no reasoning", "no reasoning"),
        ("", ""),
    ],
)
def test_strip_reasoning(text: str, expected: str) -> None:
    assert em.strip_reasoning(text) == expected


# ------------------------------------------------------------------ extraction

PATTERN = r"answer is (\S+)"


@pytest.mark.parametrize(
    ("text", "pattern", "cut", "expected"),
    [
        # without a pattern: the final non-empty line of a finished output
        ("Let me see.\n9 * 2 = 18\n18\n\n", None, False, "18"),
        ("18", None, False, "18"),
        ("", None, False, None),
        ("  \n \n", None, False, None),
        ("<think>long</think>\n42", None, False, "42"),
        ("<think>never finished", None, False, None),
        # ... and nothing in an output the budget cut: its last line is not the model's last
        ("Let me see.\n9 * 2 = 18\n18", None, True, None),
        ("<think>cut while reasoning", None, True, None),
        # with a pattern: the first group of the LAST match
        ("the answer is 17. No wait, the answer is 18.\n", PATTERN, False, "18."),
        ("the answer is 17, no, the answer is 18 ", PATTERN, True, "18"),
        ("no match here", PATTERN, False, None),
        ("#### 18", r"#### (\S+)", False, "18"),
        ("<think>the answer is 3</think>the answer is 4\n", PATTERN, False, "4"),
        ("<think>the answer is 3", PATTERN, True, None),  # only in unfinished reasoning
        # a cut output: a match running to the very end may be a word cut in half
        ("the answer is 1", PATTERN, True, None),
        ("the answer is 17 and the answer is 1", PATTERN, True, "17"),
        ("the answer is 1", PATTERN, False, "1"),  # finished: the model meant 1
        ("the answer is 18\n", PATTERN, True, "18"),  # something followed: complete
        ("answer: (maybe)", r"answer: (\w+)?", False, None),  # the group did not take part
    ],
)
def test_extract_answer(text: str, pattern: str | None, cut: bool, expected: str | None) -> None:
    assert em.extract_answer(text, pattern, cut=cut) == expected


def test_extract_answer_needs_a_capture_group() -> None:
    with pytest.raises(ValueError, match="no capture group"):
        em.extract_answer("18", r"\d+")


@pytest.mark.parametrize(
    ("output", "cut", "pattern", "hit", "truncated"),
    [
        ("step1 step2\n18", False, None, True, False),
        ("step1 step2\n17", False, None, False, False),  # wrong, not truncated
        ("step1 step2", True, None, False, True),  # cut before the answer
        ("step1 step2\n1", True, None, False, True),  # cut mid-answer ("18")
        ("the answer is 1", True, PATTERN, False, True),  # cut mid-word
        ("the answer is 18 because", True, PATTERN, True, False),  # cut after the answer
        ("<think>9+9", True, None, False, True),
        ("", False, None, False, False),  # finished with nothing: a miss, not truncated
    ],
)
def test_score(output: str, cut: bool, pattern: str | None, hit: bool, truncated: bool) -> None:
    result = em.score(output, ["18"], pattern=pattern, cut=cut)
    assert (result.hit, result.truncated) == (hit, truncated)
    assert not (result.hit and result.truncated)
