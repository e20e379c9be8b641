"""Manifests against the Kubernetes OpenAPI schemas, and the TrainingRequest CRD against the catalog.

The CRD's schema is generated from issueops.spec.catalog; here it must (1) be what is committed,
(2) be structural, as the API server requires, and (3) accept and reject exactly what
`validate_spec` accepts and rejects, over a corpus built from the catalog itself.
"""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from issueops.errors import SpecError
from issueops.lifecycle.crd import CRD_PATH, render_crd, spec_schema, training_request_crd
from issueops.spec.body import validate_spec
from issueops.spec.catalog import ALGORITHMS, METRICS, TASK_METRICS, TASK_TYPES

kubernetes_validate = pytest.importorskip("kubernetes_validate")

ROOT = Path(__file__).resolve().parent.parent / "manifests"
OURS = [
    ROOT / "namespace.yaml",
    CRD_PATH,
    *sorted((ROOT / "rbac").glob("*.yaml")),
    *sorted((ROOT / "operator").glob("*.yaml")),
    *sorted((ROOT / "bridge").glob("*.yaml")),
]
KUBERNETES = "1.30.0"  # kind's node images of 2024-2026 are 1.30 and later
JUNCTORS = ("allOf", "anyOf", "oneOf", "not")
FORBIDDEN_IN_JUNCTORS = ("type", "description", "default", "additionalProperties", "nullable")


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


# ---------------------------------------------------------------------- core kinds


@pytest.mark.parametrize("path", OURS, ids=lambda p: str(p.relative_to(ROOT)))
def test_manifest_validates_against_the_kubernetes_openapi_schema(path):
    for doc in documents(path):
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_kustomization_lists_every_manifest_and_no_secret_values():
    kustomization = yaml.safe_load((ROOT / "kustomization.yaml").read_text())
    listed = {ROOT / r for r in kustomization["resources"]}
    assert set(OURS) == listed
    assert kustomization["namespace"] == "issueops"
    kinds = [d["kind"] for p in OURS for d in documents(p)]
    assert "Secret" not in kinds  # referenced by name only


def _deployments() -> list[dict]:
    return [d for p in OURS for d in documents(p) if d["kind"] == "Deployment"]


def test_deployments_are_hardened_and_bounded():
    deployments = _deployments()
    assert {d["metadata"]["name"] for d in deployments} == {"issueops-operator", "issueops-bridge"}
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"]:
            name = f"{deployment['metadata']['name']}/{container['name']}"
            assert ":" in container["image"] and not container["image"].endswith(":latest"), name
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, name
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
            assert {"requests", "limits"} <= set(container["resources"]), name
            assert "livenessProbe" in container and "readinessProbe" in container, name
            refs = [
                e["valueFrom"]["secretKeyRef"]["name"]
                for e in container.get("env", [])
                if "secretKeyRef" in e.get("valueFrom", {})
            ]
            assert set(refs) <= {"issueops-github", "issueops-s3"}, name


def test_operator_rbac_is_least_privilege():
    rules = {
        d["metadata"]["name"] + "/" + d["kind"]: d["rules"]
        for p in (ROOT / "rbac").glob("*.yaml")
        for d in documents(p)
        if d["kind"] in ("Role", "ClusterRole")
    }
    for name, role_rules in rules.items():
        for rule in role_rules:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"], name
            assert "delete" not in rule["verbs"], name
    bridge = rules["issueops-bridge/Role"]
    assert all("trainingrequests/status" not in r["resources"] for r in bridge)
    kinds = {d["kind"] for p in (ROOT / "rbac").glob("*.yaml") for d in documents(p)}
    assert "ClusterRole" not in kinds and "ClusterRoleBinding" not in kinds  # namespaced only


# ---------------------------------------------------------------------- the CRD


def test_committed_crd_is_generated_from_the_catalog():
    assert CRD_PATH.read_text() == render_crd(), "run `python -m issueops.lifecycle.crd` and commit"


def test_crd_has_status_printer_columns_and_short_names():
    version = training_request_crd()["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Phase"] == ".status.phase" and columns["Attempt"] == ".status.attempt"
    assert "treq" in training_request_crd()["spec"]["names"]["shortNames"]
    phases = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["phase"]
    assert phases["enum"] == [
        "Pending",
        "Running",
        "WaitingForOperator",
        "Succeeded",
        "Failed",
        "RolledBack",
        "Cancelled",
    ]


def _structural_problems(node: Any, path: str = "", inside: bool = False) -> list[str]:
    """Kubernetes' structural-schema rules, the ones a generated schema could break."""
    problems: list[str] = []
    if not isinstance(node, dict):
        return problems
    if inside:
        problems += [f"{path}: {k} inside a junctor" for k in FORBIDDEN_IN_JUNCTORS if k in node]
    elif "type" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        problems.append(f"{path}: no type")
    for key, child in node.get("properties", {}).items():
        problems += _structural_problems(child, f"{path}.{key}", inside)
    if "items" in node:
        problems += _structural_problems(node["items"], f"{path}[]", inside)
    for junctor in JUNCTORS:
        for i, branch in enumerate(node.get(junctor, []) if junctor != "not" else [node.get("not")]):
            if branch is None:
                continue
            problems += _structural_problems(branch, f"{path}/{junctor}[{i}]", True)
            if not inside:  # nested junctors are checked against the same outer node
                problems += _undeclared(branch, node, f"{path}/{junctor}[{i}]")
    return problems


def _undeclared(branch: dict, outer: dict, path: str) -> list[str]:
    """A property named inside a junctor must also be declared (with its type) outside it."""
    out = []
    for key, child in branch.get("properties", {}).items():
        if key not in outer.get("properties", {}):
            out.append(f"{path}.{key} is not declared outside the junctor")
        else:
            out += _undeclared(child, outer["properties"][key], f"{path}.{key}")
    for junctor in JUNCTORS:
        for sub in branch.get(junctor, []) if junctor != "not" else [branch.get("not")]:
            if sub is not None:
                out += _undeclared(sub, outer, path)
    return out


def test_crd_schema_is_structural():
    schema = training_request_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert _structural_problems(schema) == []


def to_json_schema(node: Any) -> Any:
    """OpenAPI v3.0 as the API server applies it, for jsonschema's Draft 4 validator:
    `nullable` becomes a null type, and unknown fields are errors (kubectl's default
    server-side field validation is Strict)."""
    if isinstance(node, list):
        return [to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: to_json_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes")}
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    if (
        node.get("type") == "object"
        and "properties" in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


SPEC_VALIDATOR = jsonschema.Draft4Validator(to_json_schema(spec_schema()))


def pruned(doc: Any, schema: dict) -> Any:
    """What the API server keeps: a null in a field that is not `nullable` is dropped before
    validation, so the operator (and validate_spec) see the field as absent."""
    if not isinstance(doc, dict):
        return doc
    properties = schema.get("properties", {})
    out = {}
    for key, value in doc.items():
        field = properties.get(key, {})
        if value is None and key in properties and not field.get("nullable"):
            continue
        out[key] = pruned(value, field)
    return out


def crd_accepts(doc: dict) -> bool:
    return SPEC_VALIDATOR.is_valid(doc)


def python_accepts(doc: dict) -> bool:
    try:
        validate_spec(copy.deepcopy(doc))
    except SpecError:
        return False
    return True


def test_example_training_requests_validate_against_the_crd():
    examples = documents(ROOT / "examples" / "trainingrequest.yaml")
    schema = to_json_schema(training_request_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    assert len(examples) >= 2
    for example in examples:
        jsonschema.Draft4Validator(schema).validate(example)
        validate_spec(example["spec"])


def _base(algo) -> dict:
    doc = {"learning_type": algo.learning_type, "algorithm": algo.name}
    if algo.learning_type == "reinforcement":
        doc["environment"] = "CartPole-v1"
    else:
        doc["dataset_id"] = "sklearn:iris"
    return doc


def corpus() -> list[tuple[str, dict]]:
    """Valid and invalid specs for every algorithm, field and bound in the catalog."""
    cases: list[tuple[str, dict]] = []
    names = {n for a in ALGORITHMS.values() for p in a.params for n in (p.name, *p.aliases)}
    for algo in ALGORITHMS.values():
        base = _base(algo)
        cases.append((f"{algo.name} minimal", base))
        own = {n for p in algo.params for n in (p.name, *p.aliases)}
        for param in algo.params:
            values: list[Any] = [param.default, "text", True, [1], {"a": 1}, None]
            if param.type in ("int", "float", "int_list"):
                for bound in (param.minimum, param.maximum):
                    if bound is not None:
                        step = 1 if param.type != "float" else 0.001
                        values += [bound, bound - step, bound + step]
            if param.type == "int":
                values += [1.5]
            if param.type == "int_list":
                values += [[], [param.minimum or 1, 2], ["a"]]
                values += [[param.minimum - 1] if param.minimum is not None else [-1]]
            if param.choices:
                values += list(param.choices) + ["none-of-these"]
            for value in values:
                if isinstance(value, float) and param.type == "int" and value.is_integer():
                    continue  # 1.0 as an integer: JSON cannot tell it from 1
                for name in (param.name, *param.aliases):
                    cases.append(
                        (f"{algo.name}.{name}={value!r}", {**base, "hyperparameters": {name: value}})
                    )
            for alias in param.aliases:
                both = {param.name: param.default or 1, alias: param.default or 1}
                cases.append((f"{algo.name} {param.name}+{alias}", {**base, "hyperparameters": both}))
        for foreign in sorted(names - own):
            cases.append((f"{algo.name} foreign {foreign}", {**base, "hyperparameters": {foreign: 1}}))
        for task in TASK_TYPES:
            cases.append((f"{algo.name} task {task}", {**base, "task_type": task}))
            for metric in METRICS:
                cases.append(
                    (f"{algo.name} {task} {metric}", {**base, "task_type": task, "evaluation_metric": metric})
                )
        for metric in METRICS:
            cases.append((f"{algo.name} metric {metric}", {**base, "evaluation_metric": metric}))
        for task in algo.task_types:
            metrics = TASK_METRICS[task]
            for metric in (None, *metrics):
                m = METRICS[metric or algo.metric_for(task)]
                thresholds = [0.5, -0.5, 1.5, 1e6, -1e6]
                thresholds += [b for b in (m.lower_bound, m.upper_bound) if b is not None]
                for threshold in thresholds:
                    doc = {**base, "task_type": task, "evaluation_threshold": threshold}
                    if metric:
                        doc["evaluation_metric"] = metric
                    cases.append((f"{algo.name} {task} {metric} >= {threshold}", doc))
                    if task == algo.task_types[0]:
                        without_task = {k: v for k, v in doc.items() if k != "task_type"}
                        cases.append((f"{algo.name} {metric} >= {threshold} (default task)", without_task))
        other = "supervised" if algo.learning_type != "supervised" else "unsupervised"
        cases += [
            (f"{algo.name} wrong learning_type", {**base, "learning_type": other}),
            (f"{algo.name} with target", {**base, "target": "label"}),
            (f"{algo.name} with environment", {**base, "environment": "CartPole-v1"}),
            (f"{algo.name} with dataset", {**base, "dataset_id": "sklearn:iris"}),
            (f"{algo.name} no dataset", {k: v for k, v in base.items() if k != "dataset_id"}),
            (f"{algo.name} no environment", {k: v for k, v in base.items() if k != "environment"}),
        ]
    iris = _base(ALGORITHMS["random_forest"])
    for key, values in {
        "learning_type": ["supervised", "deep", 3, None],
        "algorithm": ["svm", 1],
        "dataset_id": ["", "   ", "x" * 1024, "x" * 1025, "a\x00b", 5],
        "target": ["label", "", "t" * 200, "t" * 201, 7],
        "environment": ["CartPole-v1"],
        "max_retry": [0, 10, 11, -1, 2.5, True, "3"],
        "model_name": ["bc-rf", "-bad", "a" * 100, "a" * 101, "a b", 1],
        "manual_approval": [True, False, "yes", 1],
        "seed": [0, 2**31 - 1, 2**31, -1, 1.5, False],
        "test_size": [0.2, 0, 0.9, 0.89, -0.1, True],
        "validation_size": [0.1, 0, 0.9, 0.5],
        "evaluation_threshold": [0.9, "high", True, math.inf],
        "retrain_every": [
            "7d",
            "12h",
            "2w",
            "8784h",
            "8785h",
            "366d",
            "367d",
            "52w",
            "53w",
            "0d",
            "07d",
            "7",
            "7m",
            " 7d",
            "7d\n",
            7,
            True,
            None,
        ],
        "max_regression": [0, 0.05, 3, -0.1, "0.1", True, None],
        "unknown_field": [1],
        "hyperparameters": [[], "n_estimators=1", None],
    }.items():
        for value in values:
            cases.append((f"{key}={value!r:.40}", {**iris, key: value}))
    return cases


# Where JSON Schema cannot follow Python on purpose; each is still rejected or accepted by
# the API server as noted (CEL, or a field kubectl would not even send).
KNOWN_DIFFERENCES = {
    "evaluation_threshold=inf": "JSON has no infinity; kubectl cannot send it",
    "test_size=0.89": "0.89 + the default 0.1 leaves < 10% for training: the CEL rule rejects it",
    "retrain_every='7d\\n'": "Python's $ also matches before a final newline; the API server's RE2 does not",
}


def test_crd_and_python_validation_agree_on_the_corpus():
    schema = spec_schema()
    cases = [(name, pruned(doc, schema)) for name, doc in corpus()]
    assert len(cases) > 2000
    disagreements = [
        f"{name}: python={'ok' if py else 'rejects'} crd={'ok' if crd else 'rejects'}"
        for name, doc in cases
        if name not in KNOWN_DIFFERENCES and (py := python_accepts(doc)) != (crd := crd_accepts(doc))
    ]
    assert disagreements == [], disagreements[:20]
    accepted = sum(python_accepts(doc) for _, doc in cases)
    assert 0.1 < accepted / len(cases) < 0.9  # the corpus has both sides


def test_the_size_split_rule_is_a_cel_rule():
    doc = {**_base(ALGORITHMS["random_forest"]), "test_size": 0.5, "validation_size": 0.5}
    assert not python_accepts(doc)
    rules = [r["rule"] for r in spec_schema()["x-kubernetes-validations"]]
    assert any("test_size" in r and "validation_size" in r and "< 0.9" in r for r in rules)


def test_algorithm_names_are_lowercase_in_the_crd_only():
    # validate_spec forgives "Random_Forest"; the API server takes the catalog's spelling only.
    doc = {**_base(ALGORITHMS["random_forest"]), "algorithm": "Random_Forest"}
    assert python_accepts(doc) and not crd_accepts(doc)


# ---------------------------------------------------------------------- monitoring (issue 15)

MONITORING = ROOT / "monitoring"
PROMETHEUS = MONITORING / "prometheus"
# The prometheus-operator CRDs' (monitoring.coreos.com/v1) schema for the fields these manifests use,
# written from the CRDs' openAPIV3Schema: unknown fields are errors, as a strict apply makes them.
_DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}, "labels": _LABELS},
    "additionalProperties": False,
}
PROMETHEUS_RULE_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "groups": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name"],
                        "additionalProperties": False,
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "interval": {"type": "string", "pattern": _DURATION},
                            "rules": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["expr"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "alert": {"type": "string"},
                                        "record": {"type": "string"},
                                        "expr": {"type": ["string", "integer"]},
                                        "for": {"type": "string", "pattern": _DURATION},
                                        "keep_firing_for": {"type": "string", "pattern": _DURATION},
                                        "labels": _LABELS,
                                        "annotations": _LABELS,
                                    },
                                },
                            },
                        },
                    },
                }
            },
        },
    },
}
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchLabels": _LABELS},
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["port"],
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {"type": "string", "pattern": _DURATION},
                            "scrapeTimeout": {"type": "string", "pattern": _DURATION},
                        },
                    },
                },
            },
        },
    },
}


def _monitoring_docs() -> list[dict]:
    return [
        d for p in sorted(MONITORING.glob("*.yaml")) if p.name != "kustomization.yaml" for d in documents(p)
    ]


def _prometheus_docs() -> list[dict]:
    return [
        d for p in sorted(PROMETHEUS.glob("*.yaml")) if p.name != "kustomization.yaml" for d in documents(p)
    ]


def documented_series() -> set[str]:
    """The metric names of the README's series table (Monitoring, "Metrics and alerts")."""
    text = (ROOT.parent / "README.md").read_text()
    table = text.split("### Metrics and alerts", 1)[1].split("| alert |", 1)[0]
    return set(re.findall(r"^\| `(issueops_[a-z_]+)` \|", table, re.MULTILINE))


def _series_in(expr: str) -> set[str]:
    import re

    names = set(re.findall(r"\bissueops_[a-z_]+", expr))
    return {
        re.sub(r"_(bucket|sum|count)$", "", n) if n.endswith(("_bucket", "_sum", "_count")) else n
        for n in names
    }


def test_monitoring_manifests_validate_and_are_listed_by_their_kustomizations():
    for doc in _monitoring_docs():
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    for folder in (MONITORING, PROMETHEUS):
        kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
        files = {p.name for p in folder.glob("*.yaml") if p.name != "kustomization.yaml"}
        assert set(kustomization["resources"]) == files and kustomization["namespace"] == "issueops"
    kinds = {d["kind"] for d in _monitoring_docs() + _prometheus_docs()}
    assert "Secret" not in kinds
    assert {"ServiceMonitor", "PrometheusRule"} == {d["kind"] for d in _prometheus_docs()}


def test_the_check_cronjob_and_the_receiver_run_hardened_with_the_operators_settings():
    docs = _monitoring_docs()
    [cronjob] = [d for d in docs if d["kind"] == "CronJob"]
    [receiver] = [d for d in docs if d["kind"] == "Deployment"]
    job = cronjob["spec"]
    assert job["concurrencyPolicy"] == "Forbid"
    pods = {
        "cronjob": job["jobTemplate"]["spec"]["template"]["spec"],
        "receiver": receiver["spec"]["template"]["spec"],
    }
    [check] = pods["cronjob"]["containers"]
    assert check["command"] + check["args"] == ["issueops", "monitor", "check", "--open-issues"]
    [serve] = pods["receiver"]["containers"]
    assert serve["command"][:3] == ["issueops", "monitor", "serve"]
    assert "livenessProbe" in serve and "readinessProbe" in serve
    operator = yaml.safe_load((ROOT / "operator" / "deployment.yaml").read_text())
    operator_refs = {
        (e["name"], e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for e in operator["spec"]["template"]["spec"]["containers"][0]["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    for name, pod in pods.items():
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            assert ":" in container["image"] and not container["image"].endswith(":latest"), name
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, name
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
            assert {"requests", "limits"} <= set(container["resources"]), name
            assert container["envFrom"] == [{"configMapRef": {"name": "issueops-config"}}], name
            refs = {
                (e["name"], e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
                for e in container["env"]
                if "secretKeyRef" in e.get("valueFrom", {})
            }
            assert refs and refs <= operator_refs, name  # the Secrets as the operator reads them
    # The logger URL of the examples and the README is the receiver's Service.
    [service] = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "issueops-monitor"]
    assert service["spec"]["selector"] == receiver["spec"]["selector"]["matchLabels"]
    logged = yaml.safe_load((ROOT / "kserve" / "examples" / "inferenceservice-logged.yaml").read_text())
    assert (
        logged["spec"]["predictor"]["logger"]["url"]
        == "http://issueops-monitor.issueops.svc.cluster.local/events"
    )


def test_the_logged_inference_service_example_is_what_the_code_writes():
    from issueops.serving.kserve import inference_service

    logged = yaml.safe_load((ROOT / "kserve" / "examples" / "inferenceservice-logged.yaml").read_text())
    assert logged == inference_service(
        "breast-cancer-random-forest",
        1,
        "s3://issueops/triton/breast-cancer-random-forest/1/cpu",
        run_id="train-20261121-172359-79cf",
        payload_logger_url="http://issueops-monitor.issueops.svc.cluster.local/events",
    )


def test_service_monitors_and_rules_follow_the_prometheus_operator_schema():
    services = {
        d["metadata"]["labels"]["app.kubernetes.io/name"]: {p["name"] for p in d["spec"]["ports"]}
        for p in [ROOT / "bridge" / "service.yaml", *MONITORING.glob("*.yaml")]
        if p.name != "kustomization.yaml"
        for d in documents(p)
        if d["kind"] == "Service"
    }
    monitors = [d for d in _prometheus_docs() if d["kind"] == "ServiceMonitor"]
    for monitor in monitors:
        jsonschema.Draft202012Validator(SERVICE_MONITOR_SCHEMA).validate(monitor)
        name = monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
        assert all(e["path"] == "/metrics" for e in monitor["spec"]["endpoints"])
        if name != "issueops-serve":  # a Service of the user's own `issueops serve`
            assert {e["port"] for e in monitor["spec"]["endpoints"]} <= services[name], name
    assert {m["metadata"]["name"] for m in monitors} == {
        "issueops-bridge",
        "issueops-operator",
        "issueops-monitor",
        "issueops-serve",
    }
    [rule] = [d for d in _prometheus_docs() if d["kind"] == "PrometheusRule"]
    jsonschema.Draft202012Validator(PROMETHEUS_RULE_SCHEMA).validate(rule)
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    for alert in alerts:
        expr = alert["expr"]
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), alert["alert"]
        assert (
            alert["labels"]["severity"] in ("critical", "warning", "info") and alert["annotations"]["summary"]
        )
    names = {a["alert"] for a in alerts}
    readme = (ROOT.parent / "README.md").read_text()
    assert all(f"| `{name}` |" in readme for name in names)
    for wanted in ("TrainingFailed", "InferenceErrorRate", "DriftPersisting", "NoModelServing", "StaleModel"):
        assert f"IssueOps{wanted}" in names


def test_alerts_and_dashboard_read_only_the_documented_series():
    documented = documented_series()
    assert len(documented) == 11
    [rule] = [d for d in _prometheus_docs() if d["kind"] == "PrometheusRule"]
    in_rules = set().union(*(_series_in(r["expr"]) for g in rule["spec"]["groups"] for r in g["rules"]))
    [configmap] = [d for d in _monitoring_docs() if d["kind"] == "ConfigMap"]
    assert configmap["metadata"]["labels"] == {"grafana_dashboard": "1"}
    dashboard = json.loads(configmap["data"]["issueops.json"])
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    assert all(p["datasource"]["uid"] == "${datasource}" and p["targets"] for p in panels)
    in_dashboard = set().union(*(_series_in(t["expr"]) for p in panels for t in p["targets"]))
    assert in_rules <= documented and in_dashboard <= documented
    assert in_rules | in_dashboard == documented  # every documented series is read somewhere
