"""The YAML dumper quotes every string a YAML 1.1 or 1.2 parser could read as something else.

``tests/unit/schema/test_yaml_go_reading.py`` checks the same dumper against kubectl itself.
"""

from __future__ import annotations

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from stopbudget.schema import crdgen, yamlout

# (text, whether a YAML 1.1 or 1.2 parser may read it as a non-string)
TABLE: list[tuple[str, bool]] = [
    # booleans: YAML 1.1 (go-yaml v2, which kubectl and Helm use, has y and n; PyYAML has not)
    ("y", True), ("Y", True), ("yes", True), ("Yes", True), ("YES", True),
    ("n", True), ("N", True), ("no", True), ("No", True), ("NO", True),
    ("true", True), ("True", True), ("TRUE", True), ("false", True), ("False", True),
    ("FALSE", True), ("on", True), ("On", True), ("ON", True), ("off", True), ("Off", True),
    ("OFF", True),
    # nulls
    ("~", True), ("null", True), ("Null", True), ("NULL", True), ("", True),
    # ints: decimal, signs, YAML 1.1 octal, 1.2 octal, hex, binary, underscores, sexagesimal
    ("0", True), ("12", True), ("-12", True), ("+12", True), ("012", True), ("0o17", True),
    ("0O17", True), ("0x1F", True), ("0X1f", True), ("0b101", True), ("-0b101", True),
    ("1_000", True), ("0x_1F", True), ("1:20", True), ("-1:20:30", True),
    # floats: with a dot, exponents with and without a dot or sign, infinities, NaN, base 60
    ("1.5", True), ("1.", True), (".5", True), ("-.5", True), ("1e3", True), ("1E3", True),
    ("1e+3", True), ("-1.5e-3", True), ("1_000.5", True), ("6.8523015e+5", True),
    (".inf", True), (".Inf", True), (".INF", True), ("-.inf", True), ("+.Inf", True),
    (".nan", True), (".NaN", True), (".NAN", True), ("190:20:30.15", True),
    # timestamps (PyYAML reads a date), and the merge key
    ("2023-11-16", True), ("2023-1-2", True), ("2023-11-16T18:15:46Z", True),
    ("2001-12-14 21:59:43.10 -5", True), ("<<", True), ("=", True),
    # strings everywhere
    ("samples", False), ("budget", False), ("n1", False), ("yes!", False), ("no way", False),
    ("nope", False), ("On call", False), ("1.2.3", False), (".", False), ("-", False),
    ("1e", False), ("e3", False), ("0x", False), ("0xZZ", False), ("12:60", False),
    ("1 2", False), ("v1alpha1", False), ("30s", False), ("Auto", False), ("inf", False),
    ("nan", False), ("2023-11", False), ("{budget}", False), ("0.1.0-x", False),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), TABLE, ids=[repr(t) for t, _ in TABLE])
def test_ambiguous(text: str, expected: bool) -> None:
    assert yamlout.ambiguous(text) is expected


def _quoted(emitted: str) -> bool:
    """Whether the first scalar of ``emitted`` (a key when it is a mapping) is quoted."""
    return emitted.removeprefix("? ")[:1] in {"'", '"'}


@pytest.mark.parametrize(("text", "expected"), TABLE, ids=[repr(t) for t, _ in TABLE])
def test_ambiguous_strings_are_quoted_as_keys_and_values(text: str, expected: bool) -> None:
    value = yamlout.dump(text)
    key = yamlout.dump({text: 1})
    if expected:
        assert _quoted(value), value
        assert _quoted(key), key
    assert yaml.safe_load(value) == text
    assert yaml.safe_load(yamlout.dump({text: [text]})) == {text: [text]}


def test_the_crd_leaves_no_ambiguous_string_plain() -> None:
    assert yamlout.plain_ambiguous_strings(crdgen.render()) == []
    # What the dumper changed: PyYAML alone writes a property named y plain.
    schema = {"properties": {"y": {"type": "string"}}, "required": ["y"]}
    assert yamlout.plain_ambiguous_strings(yaml.safe_dump(schema)) == ["y", "y"]
    assert yamlout.dump(schema) == "properties:\n  'y':\n    type: string\nrequired:\n- 'y'\n"


# --------------------------------------------------------------------------- properties


@given(st.text())
def test_any_string_reads_back_as_itself(text: str) -> None:
    assert yaml.safe_load(yamlout.dump(text)) == text
    assert yaml.safe_load(yamlout.dump({text: [text, {"k": text}]})) == {text: [text, {"k": text}]}


def _with_underscores(draw: st.DrawFn, digits: str) -> str:
    if len(digits) < 2 or not draw(st.booleans()):
        return digits
    at = draw(st.integers(1, len(digits) - 1))
    return digits[:at] + "_" + digits[at:]


@st.composite
def ambiguous_words(draw: st.DrawFn) -> str:
    """A word of the YAML 1.1/1.2 grammars of booleans, nulls, ints, floats and timestamps."""
    sign = draw(st.sampled_from(["", "-", "+"]))
    number = draw(st.integers(0, 10**9))
    kind = draw(
        st.sampled_from(["word", "decimal", "hex", "octal", "binary", "float", "exp", "base60"])
    )
    if kind == "word":
        return draw(st.sampled_from(sorted(yamlout.BOOLEANS | yamlout.NULLS)))
    if kind == "decimal":
        return sign + _with_underscores(draw, str(number))
    if kind == "hex":
        return sign + draw(st.sampled_from(["0x", "0X"])) + f"{number:x}"
    if kind == "octal":
        return sign + draw(st.sampled_from(["0o", "0", "0O"])) + f"{number:o}"
    if kind == "binary":
        return sign + "0b" + f"{number:b}"
    value = draw(st.floats(allow_nan=False, allow_infinity=False, min_value=0))
    if kind == "float":
        return sign + draw(st.sampled_from([repr(value), f"{value:.3f}", f".{number}"]))
    if kind == "exp":
        return sign + draw(st.sampled_from([f"{value:e}", f"{value:E}", f"{number}e{number % 40}"]))
    return f"{sign}{number % 1000 + 1}:{number % 60}:{number % 59:02d}" + draw(
        st.sampled_from(["", ".5"])
    )


@given(ambiguous_words())
def test_every_ambiguous_word_is_emitted_quoted(word: str) -> None:
    assert yamlout.ambiguous(word), word
    assert _quoted(yamlout.dump(word)), yamlout.dump(word)
    assert _quoted(yamlout.dump({word: 1})), yamlout.dump({word: 1})
    assert yaml.safe_load(yamlout.dump({word: word})) == {word: word}


@given(st.text())
def test_a_plain_scalar_is_one_no_parser_reads_otherwise(text: str) -> None:
    """Unquoted output only for strings that are neither ambiguous nor special to PyYAML."""
    emitted = yamlout.dump(text)
    if not _quoted(emitted) and not emitted.startswith(("|", ">")):
        assert not yamlout.ambiguous(text), (text, emitted)
        assert yaml.safe_load(emitted) == text
