"""The golden set: JSONL parsing with line-numbered errors, limits, sampling, ConfigMaps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from stopbudget.core.audits import dataset
from stopbudget.core.audits.dataset import DatasetError, GoldenItem

ROOT = Path(__file__).resolve().parents[4]
GSM8K = ROOT / "data" / "golden" / "gsm8k_test.jsonl"


def jsonl(*objects: Any) -> str:
    return "".join(json.dumps(o) + "\n" for o in objects)


def test_parses_every_form() -> None:
    text = (
        jsonl(
            {"question": "Capital of France?", "answers": ["Paris", "paris, France"]},
            {"prompt": "Q: 2+2?\nA:", "answer": "4"},
        )
        + "\n   \n"
        + jsonl(
            {"question": "Ducks?", "answer": "Janet sells 9 eggs.\n#### 18", "id": 7},
            {"question": "Number?", "answer": 18},
        )
    )
    items = dataset.parse_golden(text)
    assert items == [
        GoldenItem("Capital of France?", ("Paris", "paris, France"), 1),
        GoldenItem("Q: 2+2?\nA:", ("4",), 2),
        GoldenItem("Ducks?", ("18",), 5),  # blank lines skipped, still counted
        GoldenItem("Number?", ("18",), 6),
    ]


def test_the_real_gsm8k_test_set_parses() -> None:
    items = dataset.parse_golden(GSM8K.read_text(encoding="utf-8"))
    assert len(items) == 1319
    assert items[0].answers == ("18",)
    assert items[146].answers == ("2,125",)
    assert items[0].question.startswith("Janet’s ducks lay 16 eggs per day.")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"answer": "18"}', 'line 1: missing "question" or "prompt"'),
        ('{"question": "q"}', 'line 1: missing "answers" (a list) or "answer"'),
        ('{"question": "q", "prompt": "p", "answer": "1"}', 'has both "question" and "prompt"'),
        ('{"question": "q", "answers": ["1"], "answer": "1"}', 'has both "answers" and "answer"'),
        ('{"question": 3, "answer": "1"}', '"question" must be a string, got int'),
        ('{"question": "  ", "answer": "1"}', '"question" is empty'),
        ('{"question": "q", "answers": []}', '"answers" must be a non-empty list of strings'),
        ('{"question": "q", "answers": "18"}', '"answers" must be a non-empty list of strings'),
        ('{"question": "q", "answers": ["1", 2]}', '"answers"[1] must be a string, got int'),
        ('{"question": "q", "answers": ["1", ""]}', '"answers"[1] is empty'),
        ('{"question": "q", "answer": "#### "}', '"answer" is empty'),
        ('{"question": "q", "answer": null}', '"answer" must be a string, got NoneType'),
        ('{"question": "q", "answer": true}', '"answer" must be a string, got bool'),
        ('["q", "a"]', "line 1: expected a JSON object, got list"),
        ('{"question": "q", "answer": "1"', "line 1: not valid JSON: Expecting ',' delimiter"),
        ("question: q", "line 1: not valid JSON: Expecting value (column 1)"),
    ],
)
def test_bad_lines(line: str, message: str) -> None:
    with pytest.raises(DatasetError) as caught:
        dataset.parse_golden(line + "\n")
    assert len(caught.value.problems) == 1
    assert message in caught.value.problems[0]
    assert caught.value.problems[0].startswith("line 1: ")


def test_every_problem_is_reported_with_its_line() -> None:
    good = json.dumps({"question": "q", "answer": "1"})
    lines = [good] * 11 + ['{"answer": "18"}', good, "not json", "", '{"question": "q"}']
    with pytest.raises(DatasetError) as caught:
        dataset.parse_golden("\n".join(lines))
    assert caught.value.problems == [
        'line 12: missing "question" or "prompt"',
        "line 14: not valid JSON: Expecting value (column 1)",
        'line 16: missing "answers" (a list) or "answer"',
    ]
    assert str(caught.value).startswith('line 12: missing "question" or "prompt"; line 14')


def test_many_problems_are_capped_and_counted() -> None:
    with pytest.raises(DatasetError) as caught:
        dataset.parse_golden("x\n" * 50)
    assert len(caught.value.problems) == dataset.MAX_REPORTED
    assert caught.value.more == 50 - dataset.MAX_REPORTED
    assert str(caught.value).endswith("and 30 more problems")


@pytest.mark.parametrize("text", ["", "\n\n  \n"])
def test_an_empty_set_is_an_error(text: str) -> None:
    with pytest.raises(DatasetError, match="no items"):
        dataset.parse_golden(text)


def test_size_limits() -> None:
    text = jsonl(*({"question": f"q{i}", "answer": str(i)} for i in range(10)))
    assert len(dataset.parse_golden(text, max_items=10)) == 10
    with pytest.raises(DatasetError, match=r"line 10: more than 9 items, the limit"):
        dataset.parse_golden(text, max_items=9)
    size = len(text.encode())
    assert len(dataset.parse_golden(text, max_bytes=size)) == 10
    with pytest.raises(DatasetError, match=rf"is {size} bytes, more than the limit of {size - 1}"):
        dataset.parse_golden(text, max_bytes=size - 1)


# ------------------------------------------------------------------ sampling

ITEMS = [GoldenItem(f"question {i}", (str(i),), i + 1) for i in range(200)]


def test_sampling_is_deterministic_and_pinned() -> None:
    items = dataset.parse_golden(GSM8K.read_text(encoding="utf-8"))
    # Pinned: a change here means every operator would audit different questions.
    assert [i.line for i in dataset.sample(items, 5, 0)] == [22, 42, 397, 466, 713]
    assert [i.line for i in dataset.sample(items, 5, 42)] == [391, 542, 1018, 1042, 1076]


@given(st.integers(0, 2**31 - 1), st.integers(1, 250))
def test_sampling_properties(seed: int, size: int) -> None:
    chosen = dataset.sample(ITEMS, size, seed)
    assert chosen == dataset.sample(ITEMS, size, seed)
    assert len(chosen) == min(size, len(ITEMS))
    assert len({i.question for i in chosen}) == len(chosen)
    assert [i.line for i in chosen] == sorted(i.line for i in chosen)  # file order
    if size >= len(ITEMS):
        assert chosen == ITEMS


def test_seeds_give_different_samples() -> None:
    samples = {tuple(i.line for i in dataset.sample(ITEMS, 20, seed)) for seed in range(10)}
    assert len(samples) == 10


@given(st.integers(0, 1000))
def test_appending_items_keeps_the_old_sample_where_it_can(seed: int) -> None:
    old = dataset.sample(ITEMS[:150], 30, seed)
    new = dataset.sample(ITEMS, 30, seed)
    kept = [i for i in new if i in ITEMS[:150]]
    assert set(kept) <= set(old)  # nothing new from the old items enters the sample


def test_sample_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        dataset.sample(ITEMS, 0, 0)


# ------------------------------------------------------------------ ConfigMaps


def configmap(data: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "g"}, "data": data}


def test_the_example_golden_set_configmap_passes() -> None:
    doc = yaml.safe_load((ROOT / "examples" / "golden-set.yaml").read_text(encoding="utf-8"))
    assert dataset.check_configmap(doc) == []
    items = dataset.from_configmap(doc, "golden.jsonl")
    assert [i.answers for i in items] == [("18",), ("3",), ("70000",), ("540",), ("20",)]


def test_configmap_problems_have_paths() -> None:
    good = json.dumps({"question": "q", "answer": "1"})
    doc = configmap(
        {
            "golden.jsonl": f"{good}\n{good}\n" + '{"answer": "18"}\n',
            "other.jsonl": "nope\n",
            "settings.yaml": "not a golden set",
        }
    )
    assert dataset.check_configmap(doc) == [
        ("data.golden.jsonl", 'line 3: missing "question" or "prompt"'),
        ("data.other.jsonl", "line 1: not valid JSON: Expecting value (column 1)"),
    ]
    assert dataset.check_configmap(doc, "settings.yaml") == [
        ("data.settings.yaml", "line 1: not valid JSON: Expecting value (column 1)"),
    ]
    assert dataset.check_configmap(doc, "missing.jsonl") == [("data", "no key 'missing.jsonl'")]


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (configmap({"a.yaml": "x"}), [("data", "no key ending in .jsonl")]),
        (configmap(None), [("data", "no key ending in .jsonl")]),
        (configmap(["x"]), [("data", "must be a mapping")]),
        (configmap({"g.jsonl": 3}), [("data.g.jsonl", "must be text, got int")]),
        ({"apiVersion": "v1", "kind": "Secret"}, [("kind", "v1/Secret is not a v1 ConfigMap")]),
    ],
)
def test_configmap_shape_problems(doc: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    found = dataset.check_configmap(doc)
    assert [(p, m[: len(e)]) for (p, m), (_, e) in zip(found, expected, strict=True)] == expected


def test_from_configmap_errors_name_the_key() -> None:
    doc = configmap({"golden.jsonl": '{"answer": "1"}\n'})
    with pytest.raises(DatasetError, match=r"data.golden.jsonl: line 1: missing"):
        dataset.from_configmap(doc, "golden.jsonl")
    with pytest.raises(DatasetError, match=r"data: no key 'gold.jsonl'; keys: golden.jsonl"):
        dataset.from_configmap(doc, "gold.jsonl")
    binary = {"apiVersion": "v1", "kind": "ConfigMap", "binaryData": {"g.jsonl": "eA=="}}
    with pytest.raises(DatasetError, match="it is in binaryData"):
        dataset.from_configmap(binary, "g.jsonl")
