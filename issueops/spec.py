"""An issue body becomes a validated TrainingSpec, or a list of human-readable problems."""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import yaml

from issueops.algorithms import (
    ALGORITHMS,
    LEARNING_TYPES,
    METRICS,
    TASK_METRICS,
    Algorithm,
    algorithms_for,
    check_hyperparameters,
)
from issueops.errors import SpecError

MAX_BODY_BYTES = 64 * 1024
MAX_YAML_NODES = 2000
MAX_RETRY_LIMIT = 10
SPEC_FIELDS = (
    "learning_type",
    "task_type",
    "algorithm",
    "dataset_id",
    "target",
    "environment",
    "hyperparameters",
    "evaluation_threshold",
    "evaluation_metric",
    "max_retry",
    "model_name",
    "manual_approval",
    "seed",
    "test_size",
    "validation_size",
)
_FENCE = re.compile(r"```[ \t]*(yaml|yml|json)?[ \t]*\r?\n(.*?)```", re.DOTALL | re.IGNORECASE)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass(frozen=True)
class TrainingSpec:
    learning_type: str
    algorithm: str
    task_type: str
    evaluation_metric: str
    dataset_id: str | None = None
    target: str | None = None
    environment: str | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    evaluation_threshold: float | None = None
    max_retry: int = 3
    model_name: str | None = None
    manual_approval: bool = False
    seed: int = 42
    test_size: float = 0.2
    validation_size: float = 0.1

    @property
    def algo(self) -> Algorithm:
        return ALGORITHMS[self.algorithm]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainingSpec:
        return cls(**json.loads(text))

    def with_hyperparameters(self, adjusted: dict[str, Any]) -> TrainingSpec:
        """A copy with operator-adjusted hyperparameters merged in, validated first."""
        canonical, problems = check_hyperparameters(self.algo, adjusted)
        if problems:
            raise SpecError(problems[0], problems=problems)
        return replace(self, hyperparameters={**self.hyperparameters, **canonical})


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML without anchors/aliases (no expansion bombs) and with a node budget."""

    def compose_node(self, parent, index):  # noqa: ANN001 - PyYAML's signature
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError("YAML aliases (*name) are not allowed in a training spec")
        event = self.peek_event()
        if getattr(event, "anchor", None):
            raise yaml.YAMLError("YAML anchors (&name) are not allowed in a training spec")
        self._nodes = getattr(self, "_nodes", 0) + 1
        if self._nodes > MAX_YAML_NODES:
            raise yaml.YAMLError(f"the document has more than {MAX_YAML_NODES} values")
        return super().compose_node(parent, index)


def load_yaml(text: str, *, what: str = "spec") -> Any:
    """Parse YAML or JSON safely; raise SpecError with a short sentence on any problem."""
    if len(text.encode("utf-8", "replace")) > MAX_BODY_BYTES:
        raise SpecError(
            f"The {what} is {len(text.encode('utf-8', 'replace')) // 1024} KiB; "
            f"the limit is {MAX_BODY_BYTES // 1024} KiB."
        )
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - _StrictLoader is a SafeLoader
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(f"The {what} is not valid YAML or JSON{line}: {reason}.") from None


def extract_document(body: str, *, key: str = "learning_type") -> Any:
    """The spec inside an issue body: a fenced block that holds `key`, else the whole body."""
    if body is None or not body.strip():
        raise SpecError("The issue body is empty; it must hold a training spec in YAML.")
    if len(body.encode("utf-8", "replace")) > MAX_BODY_BYTES:
        raise SpecError(
            f"The issue body is {len(body.encode('utf-8', 'replace')) // 1024} KiB; "
            f"the limit is {MAX_BODY_BYTES // 1024} KiB."
        )
    blocks = [m.group(2) for m in _FENCE.finditer(body)]
    for block in blocks:
        if re.search(rf"^\s*\"?{key}\"?\s*:", block, re.MULTILINE):
            return load_yaml(block)
    if blocks and not re.search(rf"^\s*\"?{key}\"?\s*:", body, re.MULTILINE):
        raise SpecError(f"No fenced block in the issue body contains '{key}:'.")
    try:
        doc = load_yaml(body)
    except SpecError:
        if not re.search(rf"^\s*\"?{key}\"?\s*:", body, re.MULTILINE):
            raise SpecError(
                f"No training spec found: put the YAML (starting with '{key}:') in the issue body "
                "or in a ```yaml block."
            ) from None
        raise
    if not isinstance(doc, dict):
        raise SpecError(
            f"No training spec found: put the YAML (starting with '{key}:') in the issue body "
            "or in a ```yaml block."
        )
    return doc


def parse_issue_body(body: str) -> TrainingSpec:
    """Issue body (bare YAML, JSON, or a fenced block in markdown) → validated spec."""
    return validate_spec(extract_document(body))


def validate_spec(doc: Any) -> TrainingSpec:
    """Check every field, collecting all problems before raising one SpecError."""
    if not isinstance(doc, dict):
        raise SpecError("The training spec must be a mapping of field: value.")
    problems: list[str] = []
    unknown = sorted(str(k) for k in doc if k not in SPEC_FIELDS)
    if unknown:
        problems.append(
            f"unknown field(s) {', '.join(repr(u[:40]) for u in unknown[:5])}; "
            f"allowed: {', '.join(SPEC_FIELDS)}."
        )

    learning_type = doc.get("learning_type")
    if learning_type not in LEARNING_TYPES:
        problems.append(
            "learning_type is required and must be one of "
            f"{', '.join(LEARNING_TYPES)}" + (f", got {learning_type!r:.40}." if learning_type else ".")
        )
        raise SpecError(problems[0], problems=problems)

    algo_name = doc.get("algorithm")
    allowed = algorithms_for(learning_type)
    if not isinstance(algo_name, str) or algo_name.lower() not in allowed:
        problems.append(
            f"algorithm {algo_name!r:.40} is not available for {learning_type} learning; "
            f"choose one of: {', '.join(allowed)}."
            if algo_name
            else f"algorithm is required; choose one of: {', '.join(allowed)}."
        )
        raise SpecError(problems[0], problems=problems)
    algo = ALGORITHMS[algo_name.lower()]

    task_type = doc.get("task_type") or algo.task_types[0]
    if task_type not in algo.task_types:
        problems.append(
            f"task_type {task_type!r:.40} does not fit {algo.name}; use {' or '.join(algo.task_types)}."
        )
        task_type = algo.task_types[0]

    hyperparameters, hp_problems = check_hyperparameters(algo, doc.get("hyperparameters"))
    problems += hp_problems

    metric = doc.get("evaluation_metric") or algo.metric_for(task_type)
    if metric not in TASK_METRICS[task_type]:
        problems.append(
            f"evaluation_metric {metric!r:.40} does not apply to {task_type}; "
            f"choose one of: {', '.join(TASK_METRICS[task_type])}."
        )
        metric = algo.metric_for(task_type)

    threshold = doc.get("evaluation_threshold")
    if threshold is not None:
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, (int, float))
            or not math.isfinite(threshold)
        ):
            problems.append(f"evaluation_threshold must be a number, got {threshold!r:.40}.")
            threshold = None
        else:
            m = METRICS[metric]
            low, high = m.lower_bound, m.upper_bound
            if (low is not None and threshold < low) or (high is not None and threshold > high):
                bounds = (
                    f"[{'-inf' if low is None else f'{low:g}'}, {'inf' if high is None else f'{high:g}'}]"
                )
                problems.append(
                    f"evaluation_threshold {threshold:g} is outside {bounds}, the range of {metric}."
                )
            threshold = float(threshold)

    max_retry = doc.get("max_retry", 3)
    if not isinstance(max_retry, int) or isinstance(max_retry, bool) or not 0 <= max_retry <= MAX_RETRY_LIMIT:
        problems.append(f"max_retry must be an integer from 0 to {MAX_RETRY_LIMIT}, got {max_retry!r:.40}.")
        max_retry = 3

    dataset_id, environment, target = doc.get("dataset_id"), doc.get("environment"), doc.get("target")
    if learning_type == "reinforcement":
        if not isinstance(environment, str) or not environment.strip():
            problems.append("environment is required for reinforcement learning, e.g. CartPole-v1.")
        elif not re.fullmatch(r"[A-Za-z0-9_/.:-]{1,100}", environment):
            problems.append(f"environment {environment!r:.60} is not a valid Gymnasium id.")
        if dataset_id is not None:
            problems.append("dataset_id does not apply to reinforcement learning; give environment.")
    else:
        if not isinstance(dataset_id, str) or not dataset_id.strip():
            problems.append(
                "dataset_id is required, e.g. sklearn:iris, an id under datasets/, or a file path."
            )
        elif len(dataset_id) > 1024 or "\x00" in dataset_id:
            problems.append("dataset_id is too long or contains control characters.")
        if environment is not None:
            problems.append(f"environment applies only to reinforcement learning, not {learning_type}.")
    if target is not None and (not isinstance(target, str) or not 0 < len(target) <= 200):
        problems.append(f"target must be a column name, got {target!r:.40}.")
    if target is not None and learning_type != "supervised":
        problems.append("target applies only to supervised learning.")

    model_name = doc.get("model_name")
    if model_name is not None and (not isinstance(model_name, str) or not _NAME.match(model_name)):
        problems.append(
            "model_name must be 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit."
        )

    manual = doc.get("manual_approval", False)
    if not isinstance(manual, bool):
        problems.append(f"manual_approval must be true or false, got {manual!r:.40}.")
    seed = doc.get("seed", 42)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**31:
        problems.append(f"seed must be a non-negative integer, got {seed!r:.40}.")
    sizes = {}
    for name, default in (("test_size", 0.2), ("validation_size", 0.1)):
        value = doc.get(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 0.9:
            problems.append(f"{name} must be a fraction between 0 and 0.9, got {value!r:.40}.")
            value = default
        sizes[name] = float(value)
    if sizes["test_size"] + sizes["validation_size"] >= 0.9:
        problems.append("test_size + validation_size must leave at least 10% of rows for training.")

    if problems:
        raise SpecError(problems[0], problems=problems)
    return TrainingSpec(
        learning_type=learning_type,
        algorithm=algo.name,
        task_type=task_type,
        evaluation_metric=metric,
        dataset_id=dataset_id.strip() if dataset_id else None,
        target=target,
        environment=environment,
        hyperparameters=hyperparameters,
        evaluation_threshold=threshold,
        max_retry=max_retry,
        model_name=model_name,
        manual_approval=manual,
        seed=seed,
        test_size=sizes["test_size"],
        validation_size=sizes["validation_size"],
    )
