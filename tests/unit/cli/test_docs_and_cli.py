"""Generated docs stay in sync; `stopbudget validate` prints file: path: message and exits right."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stopbudget.cli import main
from stopbudget.schema import apidocs
from tests.support.builders import MINIMAL

ROOT = Path(__file__).resolve().parents[3]


def test_api_reference_is_in_sync() -> None:
    committed = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    assert committed == apidocs.render(), "run `make docs` and commit docs/api.md"


def test_api_reference_documents_every_spec_field() -> None:
    text = apidocs.render()
    for field in [
        "emTarget",
        "emFloor",
        "downscaleStabilization",
        "failureThreshold",
        "configMapName",
        "answerPattern",
        "raiseBudgetOnFiring",
        "observedEM",
    ]:
        assert f"`{field}`" in text


def _write(tmp_path: Path, name: str, docs: list[object]) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump_all(docs), encoding="utf-8")
    return path


def test_validate_valid_files_exit_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = _write(tmp_path, "good.yaml", [MINIMAL])
    assert main.main(["validate", str(good)]) == 0
    assert capsys.readouterr().out == f"{good}: valid\n"


def test_validate_multi_document_reports_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = yaml.safe_load(yaml.safe_dump(MINIMAL))
    bad["spec"]["budget"]["min"] = 5000
    other = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}}
    path = _write(tmp_path, "many.yaml", [MINIMAL, bad, other])
    assert main.main(["validate", "-q", str(path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"{path}#2: spec.budget.min: min must not exceed max: lower budget.min or raise budget.max",
        f"{path}#3: kind: apps/v1/Deployment is not a stopbudget.io/v1alpha1 StopPolicy: "
        "stopbudget validate checks StopPolicy documents and golden-set ConfigMaps only",
    ]


def test_validate_reports_yaml_errors_with_position(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("spec:\n  budget: [1,\n", encoding="utf-8")
    assert main.main(["validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"{path}: line 3 column 1: not valid YAML")


def test_validate_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main.main(["validate", str(tmp_path / "nope.yaml")]) == 1
    assert "cannot read" in capsys.readouterr().err


@pytest.mark.slow
def test_console_script_runs() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "stopbudget",
            "validate",
            str(ROOT / "examples" / "recommend-mode.yaml"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith("recommend-mode.yaml: valid\n")


#: Examples of StopPolicies (and golden sets) alone, which `stopbudget validate` checks
#: whole; an example that also holds the workload (gate-sidecar.yaml: a Deployment, a
#: Service) has its StopPolicy checked in its own test below.
POLICY_EXAMPLES = [
    p
    for p in sorted((ROOT / "examples").glob("*.yaml"))
    if "kind: StopPolicy" in p.read_text(encoding="utf-8")
    and "kind: Deployment" not in p.read_text(encoding="utf-8")
]


@pytest.mark.parametrize("path", POLICY_EXAMPLES, ids=lambda p: p.name)
def test_examples_validate(path: Path) -> None:
    assert main.main(["validate", "-q", str(path)]) == 0


def test_validate_golden_set_configmap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "g"},
        "data": {"golden.jsonl": '{"question": "q", "answer": "1"}\n{"answer": "2"}\n'},
    }
    path = _write(tmp_path, "golden.yaml", [bad])
    assert main.main(["validate", "-q", str(path)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"{path}: data.golden.jsonl: line 2: ")
    assert "question" in out


def test_gate_sidecar_example_wires_the_documented_path() -> None:
    """examples/gate-sidecar.yaml: StopPolicy -> configMap sink -> ConfigMap volume -> gate,
    each link checked (names, keys, paths, ports) and the gate's arguments parsed by the
    real command line."""
    from stopbudget.gate import budgets
    from stopbudget.schema import validate

    docs = [
        d
        for d in yaml.safe_load_all((ROOT / "examples" / "gate-sidecar.yaml").read_text("utf-8"))
        if d
    ]
    by_kind = {d["kind"]: d for d in docs}
    assert validate.check_document(by_kind["StopPolicy"]) == []
    assert sorted(by_kind) == ["ConfigMap", "Deployment", "Service", "StopPolicy"]
    cm, dep, svc, sp = (by_kind[k] for k in ("ConfigMap", "Deployment", "Service", "StopPolicy"))
    pod = dep["spec"]["template"]
    containers = {c["name"]: c for c in pod["spec"]["containers"]}
    gate, vllm = containers["gate"], containers["vllm"]

    # The gate: the operator's image and its real command line.
    chart = yaml.safe_load((ROOT / "charts/stopbudget/Chart.yaml").read_text("utf-8"))
    values = yaml.safe_load((ROOT / "charts/stopbudget/values.yaml").read_text("utf-8"))
    assert gate["image"] == f"{values['image']['repository']}:{chart['appVersion']}"
    assert gate["args"][0] == "gate"  # the image's entrypoint is `stopbudget`
    args = main.parser().parse_args(gate["args"])
    assert args.engine == "vllm"
    assert args.upstream == "http://127.0.0.1:8001"
    assert args.listen == ("0.0.0.0", 8000)
    flags = dict(zip(vllm["args"][::2], vllm["args"][1::2], strict=True))
    assert (flags["--host"], int(flags["--port"])) == ("127.0.0.1", 8001)  # gate-only access

    # The sink writes the ConfigMap the gate's budgets directory mounts, a key it reads.
    sink = sp["spec"]["budget"]["sink"]
    (volume,) = pod["spec"]["volumes"]
    (mount,) = gate["volumeMounts"]
    assert mount == {"name": volume["name"], "mountPath": args.budgets, "readOnly": True}
    assert sink["type"] == "configMap"
    assert sink["configMapName"] == volume["configMap"]["name"] == cm["metadata"]["name"]
    assert sink["name"] in cm["data"]
    key = budgets.parse_name(sink["name"])
    assert key is not None
    assert (key.cls, key.kind.value) == (budgets.DEFAULT_CLASS, sp["spec"]["budget"]["kind"])
    assert budgets.parse_value(cm["data"][sink["name"]].encode()) == 1024
    assert sp["spec"]["targetRef"]["name"] == dep["metadata"]["name"]

    # The Service reaches the gate's port, on the Deployment's pods.
    (port,) = svc["spec"]["ports"]
    by_name = {p["name"]: p["containerPort"] for p in gate["ports"]}
    assert by_name[port["targetPort"]] == args.listen[1]
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert pod["metadata"]["labels"] == dep["spec"]["selector"]["matchLabels"]
    assert {d["metadata"]["namespace"] for d in docs} == {"serving"}
