"""The TrainingRequest CustomResourceDefinition, generated from the algorithm catalog.

The catalog (issueops.spec.catalog) is the one schema source: the CRD's openAPIV3Schema carries the
same enums, ranges, per-algorithm hyperparameters and required fields as `validate_spec`, and a
test checks both agree on a corpus of valid and invalid specs. The schema is structural (types
outside the junctors, value checks inside), so the API server accepts it and rejects what it
rejects. The one cross-field rule JSON Schema cannot state (test_size + validation_size < 0.9) is
a CEL rule. `python -m issueops.lifecycle.crd` rewrites manifests/crds/trainingrequests.yaml.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from issueops.lifecycle.state_machine import ACTIONS, PHASES
from issueops.spec.body import MAX_RETRY_LIMIT, retrain_every_seconds
from issueops.spec.catalog import (
    ALGORITHMS,
    LEARNING_TYPES,
    METRICS,
    TASK_METRICS,
    TASK_TYPES,
    Algorithm,
    Param,
)

GROUP = "issueops.dev"
VERSION = "v1alpha1"
KIND = "TrainingRequest"
PLURAL = "trainingrequests"
SINGULAR = "trainingrequest"
SHORT_NAMES = ["treq", "tr"]
CRD_PATH = Path(__file__).resolve().parents[2] / "manifests" / "crds" / "trainingrequests.yaml"
_TYPES = {"int": "integer", "float": "number", "bool": "boolean", "str": "string"}


def _range(param: Param) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if param.minimum is not None:
        out["minimum"] = param.minimum
        if param.exclusive_minimum:
            out["exclusiveMinimum"] = True
    if param.maximum is not None:
        out["maximum"] = param.maximum
    if param.choices:
        out["enum"] = list(param.choices)
    return out


def _shape(param: Param) -> dict[str, Any]:
    """The type of a hyperparameter (outside the junctors, as structural schemas require)."""
    if param.type == "int_list":
        return {"type": "array", "items": {"type": "integer"}}
    return {"type": _TYPES[param.type]}


def _names(algo: Algorithm) -> dict[str, Param]:
    return {name: p for p in algo.params for name in (p.name, *p.aliases)}


def _all_hyperparameters() -> dict[str, dict[str, Any]]:
    """Every hyperparameter name (and alias) of every algorithm, with its one type.

    No hyperparameter is nullable: the API server drops a null before validating it (neither a value check
    nor CEL can tell a null from an absent field), so `max_depth: null` is stored as no
    max_depth, the algorithm's default. Every nullable parameter in the catalog defaults to
    None, so that is what null asks for wherever it is allowed.
    """
    shapes: dict[str, dict[str, Any]] = {}
    for algo in ALGORITHMS.values():
        for name, param in _names(algo).items():
            shape = _shape(param)
            known = shapes.get(name)
            if known is not None and known != shape:
                raise ValueError(f"hyperparameter {name} has two types in the catalog")
            if param.nullable and param.default is not None:
                raise ValueError(f"{algo.name}.{name}: null would be stored as the default {param.default!r}")
            shapes[name] = shape
    return dict(sorted(shapes.items()))


def _algorithm_branch(algo: Algorithm, shapes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    own = _names(algo)
    every_name = list(shapes)
    ranges: dict[str, Any] = {}
    for name, param in own.items():
        check = _range(param)
        if param.type == "int_list":
            check = {"minItems": 1, "items": {k: v for k, v in check.items() if k != "enum"}}
        if check:
            ranges[name] = check
    forbidden = [{"required": [name]} for name in every_name if name not in own]
    twice = [{"required": [p.name, alias]} for p in algo.params for alias in p.aliases]
    twice += [
        {"required": [a, b]} for p in algo.params for i, a in enumerate(p.aliases) for b in p.aliases[i + 1 :]
    ]
    hyperparameters: dict[str, Any] = {"properties": ranges}
    if forbidden or twice:
        hyperparameters["not"] = {"anyOf": forbidden + twice}
    branch: dict[str, Any] = {
        "properties": {
            "algorithm": {"enum": [algo.name]},
            "learning_type": {"enum": [algo.learning_type]},
            "task_type": {"enum": list(algo.task_types)},
            "hyperparameters": hyperparameters,
        }
    }
    if algo.learning_type == "reinforcement":
        branch["required"] = ["environment"]
        branch["not"] = {"anyOf": [{"required": ["dataset_id"]}, {"required": ["target"]}]}
    else:
        branch["required"] = ["dataset_id"]
        banned = [{"required": ["environment"]}]
        if algo.learning_type != "supervised":
            banned.append({"required": ["target"]})
        branch["not"] = {"anyOf": banned}
    return branch


def _metric_fits_task() -> list[dict[str, Any]]:
    """evaluation_metric must belong to the task (given, or the algorithm's first task)."""
    branches: list[dict[str, Any]] = [
        {
            "required": ["task_type"],
            "properties": {"task_type": {"enum": [task]}, "evaluation_metric": {"enum": list(metrics)}},
        }
        for task, metrics in TASK_METRICS.items()
    ]
    by_default_task: dict[str, list[str]] = {}
    for algo in ALGORITHMS.values():
        by_default_task.setdefault(algo.task_types[0], []).append(algo.name)
    for task, names in by_default_task.items():
        branches.append(
            {
                "not": {"required": ["task_type"]},
                "properties": {
                    "algorithm": {"enum": names},
                    "evaluation_metric": {"enum": list(TASK_METRICS[task])},
                },
            }
        )
    return branches


def _metric_bounds(metric: str) -> dict[str, Any]:
    m = METRICS[metric]
    bounds: dict[str, Any] = {}
    if m.lower_bound is not None:
        bounds["minimum"] = m.lower_bound
    if m.upper_bound is not None:
        bounds["maximum"] = m.upper_bound
    return bounds


def _threshold_in_metric_range() -> list[dict[str, Any]]:
    """evaluation_threshold within the range of the metric (given, or the default for the task)."""
    branches: list[dict[str, Any]] = [
        {
            "required": ["evaluation_metric"],
            "properties": {
                "evaluation_metric": {"enum": [metric]},
                "evaluation_threshold": _metric_bounds(metric),
            },
        }
        for metric in METRICS
    ]
    for algo in ALGORITHMS.values():
        for index, task in enumerate(algo.task_types):
            branch: dict[str, Any] = {
                "not": {"required": ["evaluation_metric"]},
                "properties": {
                    "algorithm": {"enum": [algo.name]},
                    "task_type": {"enum": [task]},
                    "evaluation_threshold": _metric_bounds(algo.metric_for(task)),
                },
            }
            if index:  # only the first task is the default when task_type is left out
                branch["required"] = ["task_type"]
            branches.append(branch)
    return branches


def _whole_numbers_up_to(n: int) -> str:
    """A regular expression for 1..n written without leading zeros (RE2 and Python alike)."""

    def any_digits(count: int) -> str:
        return "" if count == 0 else "[0-9]" if count == 1 else f"[0-9]{{{count}}}"

    digits = str(n)
    shorter = len(digits) - 1  # 1 .. 10**shorter - 1
    parts = [] if shorter == 0 else ["[1-9]" if shorter == 1 else f"[1-9][0-9]{{0,{shorter - 1}}}"]
    for i, digit in enumerate(digits):  # as long as n, first smaller in digit i
        low, high = (1 if i == 0 else 0), int(digit) - 1
        if high >= low:
            smaller = f"[{low}-{high}]" if high > low else str(low)
            parts.append(digits[:i] + smaller + any_digits(len(digits) - i - 1))
    return "|".join([*parts, digits])


def _retrain_every_pattern() -> str:
    """retrain_every as validate_spec takes it: whole hours, days or weeks up to its limit (a year)."""
    units = []
    for unit in "hdw":
        largest = max(n for n in range(1, 10_000) if retrain_every_seconds(f"{n}{unit}") is not None)
        units.append(f"(?:{_whole_numbers_up_to(largest)}){unit}")
    return f"^(?:{'|'.join(units)})$"


def spec_schema() -> dict[str, Any]:
    """The openAPIV3Schema of `.spec`: a TrainingSpec, plus the request's issue and operator input."""
    hyperparameters = _all_hyperparameters()
    return {
        "type": "object",
        "description": "A training spec (the same fields as an issue body) and where it came from.",
        "required": ["learning_type", "algorithm"],
        "properties": {
            "learning_type": {"type": "string", "enum": list(LEARNING_TYPES)},
            "task_type": {
                "type": "string",
                "enum": list(TASK_TYPES),
                "description": "Default: the algorithm's first task type.",
            },
            "algorithm": {"type": "string", "enum": list(ALGORITHMS)},
            "dataset_id": {
                "type": "string",
                "minLength": 1,
                "maxLength": 1024,
                "pattern": r"^[^\x00]*[^\s\x00][^\x00]*$",
                "description": "sklearn:<name>, an id under datasets/ in the store, or a path/URI.",
            },
            "target": {"type": "string", "minLength": 1, "maxLength": 200},
            "environment": {
                "type": "string",
                "pattern": r"^[A-Za-z0-9_/.:-]{1,100}$",
                "description": "Gymnasium environment id, reinforcement learning only.",
            },
            "hyperparameters": {
                "type": "object",
                "description": "Per algorithm; names, types and ranges from the catalog.",
                "properties": hyperparameters,
            },
            "evaluation_threshold": {"type": "number"},
            "evaluation_metric": {"type": "string", "enum": list(METRICS)},
            "max_retry": {
                "type": "integer",
                "minimum": 0,
                "maximum": MAX_RETRY_LIMIT,
                "description": "Retrains after the first attempt (default 3).",
            },
            "model_name": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"},
            "manual_approval": {"type": "boolean", "description": "Default false."},
            "seed": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
            "test_size": {
                "type": "number",
                "minimum": 0,
                "exclusiveMinimum": True,
                "maximum": 0.9,
                "exclusiveMaximum": True,
                "description": "Default 0.2.",
            },
            "validation_size": {
                "type": "number",
                "minimum": 0,
                "exclusiveMinimum": True,
                "maximum": 0.9,
                "exclusiveMaximum": True,
                "description": "Default 0.1.",
            },
            "retrain_every": {
                "type": "string",
                "pattern": _retrain_every_pattern(),
                "description": (
                    "Propose a retrain this long after a version went to production: 12h, 7d, 2w "
                    "(whole hours, days or weeks, up to 366 days). Default: no schedule."
                ),
            },
            "max_regression": {
                "type": "number",
                "minimum": 0,
                "description": (
                    "How much worse than the production version (scored on the same test split) a "
                    "new version may be and still pass, in the metric's units. Default 0."
                ),
            },
            "issue": {
                "type": "object",
                "description": "The GitHub issue the request came from (set by the bridge).",
                "required": ["repository", "number"],
                "properties": {
                    "repository": {"type": "string", "pattern": r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$"},
                    "number": {"type": "integer", "minimum": 1},
                },
            },
            "requestedBy": {"type": "string", "maxLength": 100},
            "operatorInput": {
                "type": "object",
                "description": (
                    "Operator input; a new id is applied once. retrain (with "
                    "adjusted_hyperparameters) starts the next attempt while WaitingForOperator."
                ),
                "required": ["id", "action"],
                "properties": {
                    "id": {"type": "string", "minLength": 1, "maxLength": 100},
                    "action": {"type": "string", "enum": list(ACTIONS)},
                    "by": {"type": "string", "maxLength": 100},
                    "version": {"type": "string", "pattern": r"^[0-9]{1,9}$"},
                    "adjusted_hyperparameters": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": True,
                        "description": "Checked against the algorithm by the operator.",
                    },
                },
            },
        },
        "allOf": [
            {"oneOf": [_algorithm_branch(a, hyperparameters) for a in ALGORITHMS.values()]},
            {"anyOf": _metric_fits_task()},
            {"anyOf": _threshold_in_metric_range()},
        ],
        "x-kubernetes-validations": [
            {
                "rule": "(has(self.test_size) ? self.test_size : 0.2) + "
                "(has(self.validation_size) ? self.validation_size : 0.1) < 0.9",
                "message": "test_size + validation_size must leave at least 10% of rows for training.",
            },
        ],
    }


def status_schema() -> dict[str, Any]:
    nullable_string = {"type": "string", "nullable": True}
    return {
        "type": "object",
        "properties": {
            "phase": {"type": "string", "enum": list(PHASES)},
            "attempt": {"type": "integer", "minimum": 0},
            "runId": nullable_string,
            "runHandle": nullable_string,
            "restarts": {"type": "integer", "minimum": 0},
            "modelName": nullable_string,
            "modelVersion": nullable_string,
            "metricValue": {"type": "number", "nullable": True},
            "issue": {
                "type": "object",
                "nullable": True,
                "properties": {"repository": {"type": "string"}, "number": {"type": "integer"}},
            },
            "conditions": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["type", "status"],
                    "properties": {
                        "type": {"type": "string"},
                        "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                        "reason": {"type": "string"},
                        "message": {"type": "string"},
                        "lastTransitionTime": {"type": "string", "format": "date-time"},
                    },
                },
            },
            "message": {"type": "string"},
            "adjustedHyperparameters": {
                "type": "object",
                "nullable": True,
                "x-kubernetes-preserve-unknown-fields": True,
            },
            "attempts": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "attempt": {"type": "integer"},
                        "runId": {"type": "string"},
                        "decision": nullable_string,
                        "metricValue": {"type": "number", "nullable": True},
                        "statusCommentId": {"type": "integer", "nullable": True},
                        "lostRuns": {"type": "array", "nullable": True, "items": {"type": "string"}},
                    },
                },
            },
            "statusCommentId": {"type": "integer", "nullable": True},
            "statusDigest": nullable_string,
            "waitDeadline": nullable_string,
            "appliedInputs": {"type": "array", "items": {"type": "string"}},
            "uid": {"type": "string"},
            "createdAt": {"type": "string"},
            "kopf": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        },
    }


def training_request_crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES,
                "categories": ["issueops"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                        {"name": "Attempt", "type": "integer", "jsonPath": ".status.attempt"},
                        {"name": "Algorithm", "type": "string", "jsonPath": ".spec.algorithm"},
                        {"name": "Value", "type": "number", "jsonPath": ".status.metricValue"},
                        {"name": "Model", "type": "string", "jsonPath": ".status.modelVersion"},
                        {"name": "Issue", "type": "integer", "jsonPath": ".spec.issue.number"},
                        {"name": "Run", "type": "string", "jsonPath": ".status.runId", "priority": 1},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A request to train, evaluate and register a model.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema(),
                                "status": status_schema(),
                            },
                        }
                    },
                }
            ],
        },
    }


CRD_CHECK_DELAY = 10  # seconds between checks while the CRD is missing


def require_served(api) -> None:
    """Raise ours unless the API server serves TrainingRequests: the CRD not installed is a
    transient ExternalServiceError naming the fix (an operator started first waits for it),
    credentials it refuses are Unauthorized."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    from issueops.custom_resources import api_failure, unreachable
    from issueops.errors import ExternalServiceError, Unauthorized

    try:
        api.call_api(
            f"/apis/{GROUP}/{VERSION}",
            "GET",
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
            response_type="object",
            _return_http_data_only=True,
        )
    except ApiException as exc:
        if exc.status == 404:
            raise ExternalServiceError(
                f"The API server does not serve {PLURAL}.{GROUP}/{VERSION}: install the CRD with "
                f"`kubectl apply --server-side -f manifests/crds/trainingrequests.yaml` "
                f"(checking again every {CRD_CHECK_DELAY} s).",
                transient=True,
                status=404,
                retry_after=CRD_CHECK_DELAY,
            ) from None
        if exc.status == 401:
            raise Unauthorized(
                "The API server refused the operator's credentials (401 Unauthorized): "
                "its token is wrong or has expired."
            ) from None
        raise api_failure(
            f"The API server answered {exc.status} to the discovery of {GROUP}/{VERSION}: {exc.reason}",
            exc.status,
        ) from None
    except HTTPError as exc:
        raise unreachable(exc) from None


HEADER = """\
# Generated from the algorithm catalog by `python -m issueops.lifecycle.crd`; do not edit by hand.
# tests/test_manifests.py fails when this file and the catalog drift apart.
# Apply with `kubectl apply --server-side -f` (the schema is larger than the annotation that
# client-side apply keeps).
"""


def render_crd() -> str:
    return HEADER + yaml.safe_dump(training_request_crd(), sort_keys=False, width=100)


def main(argv: list[str] | None = None) -> int:
    target = Path((argv or sys.argv[1:] or [str(CRD_PATH)])[0])
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render_crd())
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
