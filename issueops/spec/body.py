"""An issue body becomes a validated TrainingSpec, or a list of human-readable problems."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Hashable
from dataclasses import asdict, dataclass, field, replace
from difflib import get_close_matches
from typing import Any

import yaml

from issueops.errors import InvalidInput, SpecError
from issueops.spec.catalog import (
    ALGORITHMS,
    DEFAULT_METRIC,
    LEARNING_TYPES,
    METRICS,
    TASK_METRICS,
    TASK_TYPES,
    Algorithm,
    algorithms_for,
    check_hyperparameters,
)

MAX_BODY_BYTES = 64 * 1024
MAX_YAML_NODES = 2000
MAX_YAML_DEPTH = 20  # a spec nests 3 deep; PyYAML's composer recurses
MAX_NUMBER_CHARS = 100  # longer than any field's range; Python refuses ints over 4,300 digits
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
    "retrain_every",
    "max_regression",
)
# One run of blanks before the newline: `[ \t]*(yaml)?[ \t]*` backtracks quadratically on a long one.
_FENCE = re.compile(r"```[ \t]*(?:(yaml|yml|json)[ \t]*)?\r?\n(.*?)```", re.DOTALL | re.IGNORECASE)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
# retrain_every: whole hours, days or weeks, from 1h to a year.
_RETRAIN_EVERY = re.compile(r"([1-9][0-9]{0,3})([hdw])")
_RETRAIN_UNIT_SECONDS = {"h": 3600, "d": 86400, "w": 7 * 86400}
MAX_RETRAIN_EVERY_S = 366 * 86400


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
    retrain_every: str | None = None  # propose a retrain this long after a version went to production
    max_regression: float | None = None  # how much worse than production a new version may be (0)

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


class _Refused(yaml.MarkedYAMLError):
    """A document that is valid YAML but past one of the spec reader's limits."""


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML with limits: no anchors/aliases (no expansion bombs) or merge keys, no key given
    twice, a node budget, a nesting depth and a number length; a value a constructor cannot read
    is a YAML error with its line, never another exception."""

    _nodes = 0
    _depth = 0
    lines_before = 0  # where the text starts in the issue body

    def compose_node(self, parent, index):  # noqa: ANN001 - PyYAML's signature
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError("YAML aliases (*name) are not allowed in a training spec")
        event = self.peek_event()
        if getattr(event, "anchor", None):
            raise yaml.YAMLError("YAML anchors (&name) are not allowed in a training spec")
        self._nodes += 1
        if self._nodes > MAX_YAML_NODES:
            raise _Refused(problem=f"it has more than {MAX_YAML_NODES} values", problem_mark=event.start_mark)
        if self._depth >= MAX_YAML_DEPTH:
            raise _Refused(
                problem=f"it nests deeper than {MAX_YAML_DEPTH} levels", problem_mark=event.start_mark
            )
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def fetch_flow_collection_start(self, token_class):  # noqa: ANN001 - PyYAML's signature
        # The scanner looks ahead over every open bracket for a simple key: stop it early too.
        if self.flow_level >= MAX_YAML_DEPTH:
            raise _Refused(
                problem=f"it nests deeper than {MAX_YAML_DEPTH} levels", problem_mark=self.get_mark()
            )
        super().fetch_flow_collection_start(token_class)

    def construct_object(self, node, deep=False):  # noqa: ANN001 - PyYAML's signature
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except Exception:  # PyYAML's constructors raise ValueError, IndexError... on odd scalars
            kind = node.tag.rsplit(":", 1)[-1]
            raise yaml.constructor.ConstructorError(
                None, None, f"{str(node.value)[:40]!r} cannot be read as {kind}", node.start_mark
            ) from None

    def construct_mapping(self, node, deep=False):  # noqa: ANN001 - PyYAML's signature
        if isinstance(node, yaml.MappingNode):
            first_line: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    raise _Refused(
                        problem="merge keys (<<) are not allowed", problem_mark=key_node.start_mark
                    )
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, Hashable):
                    continue  # PyYAML names the unhashable key
                if key in first_line:
                    raise _Refused(
                        problem=f"the key {str(key)[:60]!r} is given twice (first on line {first_line[key]})",
                        problem_mark=key_node.start_mark,
                    )
                first_line[key] = key_node.start_mark.line + 1 + self.lines_before
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node):  # noqa: ANN001 - PyYAML's signature
        if len(node.value) > MAX_NUMBER_CHARS:
            raise _Refused(
                problem=f"a number of {len(node.value)} characters is too long (at most {MAX_NUMBER_CHARS})",
                problem_mark=node.start_mark,
            )
        return super().construct_yaml_int(node)


_StrictLoader.add_constructor("tag:yaml.org,2002:int", _StrictLoader.construct_yaml_int)


def load_yaml(text: str, *, what: str = "spec", lines_before: int = 0) -> Any:
    """Parse YAML or JSON safely; raise SpecError with a short sentence on any problem. Lines are
    counted from the issue body's start: `lines_before` is where `text` starts in it."""
    if len(text.encode("utf-8", "replace")) > MAX_BODY_BYTES:
        raise SpecError(
            f"The {what} is {len(text.encode('utf-8', 'replace')) // 1024} KiB; "
            f"the limit is {MAX_BODY_BYTES // 1024} KiB."
        )
    try:
        loader = _StrictLoader(text)
        loader.lines_before = lines_before
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1 + lines_before})" if where is not None else ""
        reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        if isinstance(exc, _Refused):
            raise SpecError(f"The {what} cannot be used{line}: {reason}.") from None
        raise SpecError(f"The {what} is not valid YAML or JSON{line}: {reason}.") from None


def _key_line(key: str) -> re.Pattern[str]:
    """`key:` at the start of a line. Blanks are `[ \\t]*`, not `\\s*`: a scan that may cross line
    ends is quadratic on a body of blank lines."""
    return re.compile(rf"^[ \t]*\"?{re.escape(key)}\"?[ \t]*:", re.MULTILINE)


def has_key_line(text: str, key: str) -> bool:
    """Whether `text` has a line starting with `key:` (a linear scan, after a look for the word)."""
    return key in text and _key_line(key).search(text) is not None


def extract_document(body: str, *, key: str = "learning_type") -> Any:
    """The spec inside an issue body: a fenced block that holds `key`, else the whole body."""
    if not isinstance(body, str) or not body.strip():
        raise SpecError("The issue body is empty; it must hold a training spec in YAML.")
    if len(body.encode("utf-8", "replace")) > MAX_BODY_BYTES:
        raise SpecError(
            f"The issue body is {len(body.encode('utf-8', 'replace')) // 1024} KiB; "
            f"the limit is {MAX_BODY_BYTES // 1024} KiB."
        )
    blocks = [(m.group(2), body.count("\n", 0, m.start(2))) for m in _FENCE.finditer(body)]
    for block, lines_before in blocks:
        if has_key_line(block, key):
            return load_yaml(block, lines_before=lines_before)
    if blocks and not has_key_line(body, key):
        raise SpecError(f"No fenced block in the issue body contains '{key}:'.")
    try:
        doc = load_yaml(body)
    except SpecError:
        if key not in body:  # prose, not a spec that fails to parse
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


InputCheck = Callable[[TrainingSpec], None]


def parse_issue_body(body: str, *, check_inputs: InputCheck | None = None) -> TrainingSpec:
    """Issue body (bare YAML, JSON, or a fenced block in markdown) → validated spec.

    `check_inputs` (the dataset or environment check) runs as part of validation, so its problems
    come in the same answer as every other field's."""
    return validate_spec(extract_document(body), check_inputs=check_inputs)


def validate_spec(doc: Any, *, check_inputs: InputCheck | None = None) -> TrainingSpec:
    """Check every field, collecting all problems before raising one SpecError.

    A field that cannot be used is reported and replaced by its default, so the fields after it are
    still checked; a misspelt algorithm is checked as the one it is closest to. `check_inputs` runs
    when the fields it needs (learning type, dataset or environment) are sound."""
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
        learning_type = None
    algo = _algorithm(doc.get("algorithm"), learning_type, problems)
    if learning_type is None and algo is not None:
        learning_type = algo.learning_type  # the rest is checked as the algorithm's learning type
    # The algorithm the defaults come from: the given one, else the learning type's first.
    basis = algo or (ALGORITHMS[algorithms_for(learning_type)[0]] if learning_type else None)

    task_type = doc.get("task_type")
    if basis is not None:
        fitting = algo.task_types if algo else _task_types(learning_type)
        if not task_type:
            task_type = basis.task_types[0]
        elif task_type not in fitting:
            problems.append(
                f"task_type {task_type!r:.40} does not fit {algo.name if algo else learning_type}; "
                f"use {' or '.join(fitting)}."
            )
            task_type = basis.task_types[0]
    elif task_type is not None and task_type not in TASK_TYPES:
        problems.append(f"task_type {task_type!r:.40} is not one of {', '.join(TASK_TYPES)}.")
        task_type = None

    hyperparameters: dict[str, Any] = {}
    if algo is not None:
        hyperparameters, hp_problems = check_hyperparameters(algo, doc.get("hyperparameters"))
        problems += hp_problems
    elif not isinstance(doc.get("hyperparameters"), (dict, type(None))):
        problems.append("hyperparameters must be a mapping of name: value.")

    metric = doc.get("evaluation_metric")
    if task_type is not None:
        default_metric = basis.metric_for(task_type) if basis else DEFAULT_METRIC[task_type]
        if not metric:
            metric = default_metric
        elif metric not in TASK_METRICS[task_type]:
            problems.append(
                f"evaluation_metric {metric!r:.40} does not apply to {task_type}; "
                f"choose one of: {', '.join(TASK_METRICS[task_type])}."
            )
            metric = default_metric
    elif metric is not None and metric not in tuple(METRICS):
        problems.append(f"evaluation_metric {metric!r:.40} is not one of {', '.join(METRICS)}.")
        metric = None

    threshold = doc.get("evaluation_threshold")
    if threshold is not None:
        value = _finite_number(threshold)
        if value is None:
            problems.append(f"evaluation_threshold must be a finite number, got {threshold!r:.40}.")
        elif metric is not None:
            m = METRICS[metric]
            low, high = m.lower_bound, m.upper_bound
            if (low is not None and value < low) or (high is not None and value > high):
                bounds = (
                    f"[{'-inf' if low is None else f'{low:g}'}, {'inf' if high is None else f'{high:g}'}]"
                )
                problems.append(f"evaluation_threshold {value:g} is outside {bounds}, the range of {metric}.")
        threshold = value

    max_retry = doc.get("max_retry", 3)
    if not _is_int(max_retry) or not 0 <= max_retry <= MAX_RETRY_LIMIT:
        problems.append(f"max_retry must be an integer from 0 to {MAX_RETRY_LIMIT}, got {max_retry!r:.40}.")
        max_retry = 3

    dataset_id, environment, target = doc.get("dataset_id"), doc.get("environment"), doc.get("target")
    inputs_sound = learning_type is not None
    if learning_type == "reinforcement":
        if not isinstance(environment, str) or not environment.strip():
            problems.append("environment is required for reinforcement learning, e.g. CartPole-v1.")
            inputs_sound = False
        elif not _ENVIRONMENT.fullmatch(environment):
            problems.append(f"environment {environment!r:.60} is not a valid Gymnasium id.")
            inputs_sound = False
        if dataset_id is not None:
            problems.append("dataset_id does not apply to reinforcement learning; give environment.")
    else:
        if dataset_id is None and learning_type is not None:
            problems.append(
                "dataset_id is required, e.g. sklearn:iris, an id under datasets/, or a file path."
            )
            inputs_sound = False
        elif dataset_id is not None and (
            not isinstance(dataset_id, str) or not dataset_id.strip() or len(dataset_id) > 1024
        ):
            problems.append(
                "dataset_id must be sklearn:<name>, an id under datasets/, or a file path "
                f"(1 to 1024 characters), got {dataset_id!r:.40}."
            )
            inputs_sound = False
        elif dataset_id is not None and not dataset_id.isprintable():
            problems.append(f"dataset_id {dataset_id!r:.60} contains control characters or terminal escapes.")
            inputs_sound = False
        if environment is not None and learning_type is not None:
            problems.append(f"environment applies only to reinforcement learning, not {learning_type}.")
    if target is not None:
        if not isinstance(target, str) or not 0 < len(target) <= 200:
            problems.append(f"target must be a column name, got {target!r:.40}.")
            target = None
        elif not target.isprintable():
            problems.append(f"target {target!r:.60} contains control characters or terminal escapes.")
            target = None
        elif learning_type not in (None, "supervised"):
            problems.append("target applies only to supervised learning.")
            target = None

    model_name = doc.get("model_name")
    if model_name is not None and (not isinstance(model_name, str) or not _NAME.fullmatch(model_name)):
        problems.append(
            "model_name must be 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit."
        )
        model_name = None

    manual = doc.get("manual_approval", False)
    if not isinstance(manual, bool):
        problems.append(f"manual_approval must be true or false, got {manual!r:.40}.")
        manual = False
    seed = doc.get("seed", 42)
    if not _is_int(seed) or not 0 <= seed < 2**31:
        problems.append(f"seed must be an integer from 0 to {2**31 - 1}, got {seed!r:.40}.")
        seed = 42
    sizes = {}
    for name, default in (("test_size", 0.2), ("validation_size", 0.1)):
        value = _finite_number(doc.get(name, default))
        if value is None or not 0 < value < 0.9:
            problems.append(f"{name} must be a fraction between 0 and 0.9, got {doc.get(name)!r:.40}.")
            value = default
        sizes[name] = value
    if sizes["test_size"] + sizes["validation_size"] >= 0.9:
        problems.append("test_size + validation_size must leave at least 10% of rows for training.")
    retrain_every = doc.get("retrain_every")
    if retrain_every is not None and retrain_every_seconds(retrain_every) is None:
        problems.append(
            f"retrain_every must be a duration in whole hours, days or weeks (12h, 7d, 2w) from 1h to "
            f"366d, got {retrain_every!r:.40}."
        )
        retrain_every = None
    max_regression = doc.get("max_regression")
    if max_regression is not None:
        value = _finite_number(max_regression)
        if value is None or value < 0:
            problems.append(
                f"max_regression must be 0 or more, in the metric's units, got {max_regression!r:.40}."
            )
        max_regression = value if value is not None and value >= 0 else None

    if basis is None:
        raise SpecError(problems[0], problems=problems)
    spec = TrainingSpec(
        learning_type=learning_type,
        algorithm=basis.name,
        task_type=task_type,
        evaluation_metric=metric,
        dataset_id=dataset_id.strip() if inputs_sound and dataset_id else None,
        target=target,
        environment=environment if inputs_sound else None,
        hyperparameters=hyperparameters,
        evaluation_threshold=threshold,
        max_retry=max_retry,
        model_name=model_name,
        manual_approval=manual,
        seed=seed,
        test_size=sizes["test_size"],
        validation_size=sizes["validation_size"],
        retrain_every=retrain_every,
        max_regression=max_regression,
    )
    if check_inputs is not None and inputs_sound:
        try:
            check_inputs(spec)
        except InvalidInput as error:
            problems += error.problems
    if problems:
        raise SpecError(problems[0], problems=problems)
    return spec


_ENVIRONMENT = re.compile(r"[A-Za-z0-9_/.:-]{1,100}")


def retrain_every_seconds(value: Any) -> int | None:
    """`retrain_every` (12h, 7d, 2w) in seconds; None when it is not such a duration within a year."""
    match = _RETRAIN_EVERY.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        return None
    seconds = int(match.group(1)) * _RETRAIN_UNIT_SECONDS[match.group(2)]
    return seconds if seconds <= MAX_RETRAIN_EVERY_S else None


def _algorithm(name: Any, learning_type: str | None, problems: list[str]) -> Algorithm | None:
    """The algorithm `name` stands for; a problem when it is not one, and the closest match to
    check the rest of the spec with when it is a misspelling."""
    allowed = algorithms_for(learning_type) if learning_type else list(ALGORITHMS)
    where = f" for {learning_type} learning" if learning_type else ""
    if name is None or name == "":
        problems.append(f"algorithm is required; choose one of: {', '.join(allowed)}.")
        return None
    key = name.lower() if isinstance(name, str) else None
    if key in allowed:
        return ALGORITHMS[key]
    close = get_close_matches(key, allowed, n=1, cutoff=0.75) if key and len(key) <= 40 else []
    hint = f"did you mean {close[0]}? " if close else ""
    problems.append(
        f"algorithm {name!r:.40} is not available{where}; {hint}choose one of: {', '.join(allowed)}."
    )
    return ALGORITHMS[close[0]] if close else None


def _task_types(learning_type: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(t for a in algorithms_for(learning_type) for t in ALGORITHMS[a].task_types))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite_number(value: Any) -> float | None:
    """`value` as a float when it is a finite number (not a bool, not too large for a float)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None
