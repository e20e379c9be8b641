"""The reference profile of a version, made at training time and stored with it, so that drift and
performance checks later need no access to the training data.

It describes the features as the endpoint receives them (the raw training columns, in the order of
the export's `feature_columns`, before the preprocessing inside the graph): per-feature statistics,
a seeded sample of the training split (up to 5,000 rows), and the model's outputs on the test split
(the prediction distribution, and for classifiers the probabilities with the true labels, which the
confidence-based performance estimate calibrates on).

The package step saves it (`save_run_profile`): there the run's splits and the exported graph are
both at hand, and a version that cannot be exported is never served, so needs none.

Layout under reference_profile_location(model, version):
  profile.json         statistics, feature kinds and columns, task, classes, registered metric
  sample.parquet       the training sample
  predictions.parquet  test-split outputs: prediction, probability_<i>, true_label
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from issueops.errors import InvalidInput, NotFound
from issueops.store import ObjectStore, download_dir

from .payloads import payload_prefix

PROFILE_FILE = "profile.json"
SAMPLE_FILE = "sample.parquet"
PREDICTIONS_FILE = "predictions.parquet"
SAMPLE_ROWS = 5_000
TOP_CATEGORIES = 100
FORMAT = 1
NUMERIC_INPUT, CATEGORICAL_INPUT = "input", "categorical"  # the export's input tensors
_QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


def reference_profile_location(model: str, version: int | str) -> str:
    """Store prefix where the package step keeps the reference profile of a version."""
    return f"{payload_prefix(model, version)}/reference"


@dataclass
class FeatureProfile:
    name: str
    kind: str  # numeric | categorical | binary (two distinct values)
    tensor: str  # the V2 input tensor it arrives in
    count: int
    missing: int
    unique: int
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    max: float | None = None
    quantiles: dict[str, float] = field(default_factory=dict)
    frequencies: dict[str, float] = field(default_factory=dict)  # share of the top categories


@dataclass
class PredictionProfile:
    """The model's outputs on the test split: what prediction drift compares against."""

    kind: str  # categorical (classes, clusters) | numeric (regression)
    rows: int
    mean: float | None = None
    std: float | None = None
    quantiles: dict[str, float] = field(default_factory=dict)
    frequencies: dict[str, float] = field(default_factory=dict)


@dataclass
class ReferenceProfile:
    model: str
    version: int | None
    task_type: str
    feature_columns: dict[str, list[str]]
    features: list[FeatureProfile]
    train_rows: int
    sample_rows: int
    seed: int
    classes: list[str] | None = None
    evaluation_metric: str | None = None
    metric_value: float | None = None
    prediction: PredictionProfile | None = None
    created_at: str = ""
    format: int = FORMAT
    sample: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)
    predictions: pd.DataFrame | None = field(default=None, repr=False)

    @property
    def kinds(self) -> dict[str, str]:
        """numeric or categorical per feature, as the drift tests take them."""
        return {f.name: "numeric" if f.tensor == NUMERIC_INPUT else "categorical" for f in self.features}

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k not in ("sample", "predictions")}
        return data

    def save(self, directory: Path) -> Path:
        """profile.json, sample.parquet and predictions.parquet into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.sample.to_parquet(directory / SAMPLE_FILE, index=False)
        if self.predictions is not None:
            self.predictions.to_parquet(directory / PREDICTIONS_FILE, index=False)
        (directory / PROFILE_FILE).write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False))
        return directory

    @classmethod
    def load(cls, directory: Path) -> ReferenceProfile:
        directory = Path(directory)
        try:
            data = json.loads((directory / PROFILE_FILE).read_text())
            sample = pd.read_parquet(directory / SAMPLE_FILE)
        except (OSError, ValueError) as exc:
            raise InvalidInput(f"The reference profile in {directory} cannot be read: {exc}") from None
        predictions = (
            pd.read_parquet(directory / PREDICTIONS_FILE)
            if (directory / PREDICTIONS_FILE).is_file()
            else None
        )
        data["features"] = [FeatureProfile(**f) for f in data["features"]]
        if data.get("prediction"):
            data["prediction"] = PredictionProfile(**data["prediction"])
        known = set(cls.__dataclass_fields__) - {"sample", "predictions"}
        return cls(**{k: v for k, v in data.items() if k in known}, sample=sample, predictions=predictions)


def build_reference_profile(
    train: pd.DataFrame,
    *,
    feature_columns: Mapping[str, Sequence[str]],
    task_type: str,
    test_outputs: Mapping[str, np.ndarray] | None = None,
    test_labels: np.ndarray | None = None,
    classes: Sequence[str] | None = None,
    evaluation_metric: str | None = None,
    metric_value: float | None = None,
    model: str = "",
    version: int | None = None,
    sample_rows: int = SAMPLE_ROWS,
    seed: int = 0,
) -> ReferenceProfile:
    """The profile of a version from its training split (raw features, as prepare_data wrote them).

    `feature_columns` is the export's {"input": [numeric...], "categorical": [text...]};
    `test_outputs` the graph's outputs on the test split by name (label, probabilities, prediction),
    e.g. from reference_outputs(); `test_labels` the test targets encoded as prepare_data does
    (class index in `classes`).
    """
    columns = {tensor: list(names) for tensor, names in feature_columns.items() if names}
    names = [c for group in columns.values() for c in group]
    missing = [c for c in names if c not in train.columns]
    if missing:
        raise InvalidInput(f"The training split lacks the feature column(s) {', '.join(missing[:10])}.")
    frame = as_served(train[names], columns)
    sample = frame.sample(n=min(sample_rows, len(frame)), random_state=seed).reset_index(drop=True)
    features = [
        _feature_profile(name, tensor, frame[name]) for tensor, group in columns.items() for name in group
    ]
    predictions = None
    prediction = None
    if test_outputs:
        predictions = _prediction_table(test_outputs, test_labels, task_type, classes)
        if predictions is not None:
            predictions = predictions.sample(
                n=min(sample_rows, len(predictions)), random_state=seed
            ).reset_index(drop=True)
            prediction = _prediction_profile(predictions["prediction"], task_type)
    return ReferenceProfile(
        model=model,
        version=version,
        task_type=task_type,
        feature_columns=columns,
        features=features,
        train_rows=len(frame),
        sample_rows=len(sample),
        seed=seed,
        classes=list(classes) if classes is not None else None,
        evaluation_metric=evaluation_metric,
        metric_value=None if metric_value is None else float(metric_value),
        prediction=prediction,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        sample=sample,
        predictions=predictions,
    )


def as_served(frame: pd.DataFrame, feature_columns: Mapping[str, Sequence[str]]) -> pd.DataFrame:
    """Features as the endpoint's tensors hold them: numbers as float64 (NaN = missing), text as
    str (None = missing, as the endpoint's "")."""
    frame = frame.copy()
    for name in feature_columns.get(NUMERIC_INPUT, []):
        frame[name] = pd.to_numeric(frame[name], errors="coerce").astype(np.float64)
    for name in feature_columns.get(CATEGORICAL_INPUT, []):
        column = frame[name].astype(object)
        present = column.notna() & (column.astype(str) != "")
        frame[name] = pd.Series(np.where(present, column.astype(str), None), index=column.index, dtype=object)
    return frame


def _num(value: Any) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), 8)


def _feature_profile(name: str, tensor: str, column: pd.Series) -> FeatureProfile:
    present = column.dropna()
    unique = int(present.nunique())
    kind = "binary" if unique == 2 else ("numeric" if tensor == NUMERIC_INPUT else "categorical")
    profile = FeatureProfile(
        name=name,
        kind=kind,
        tensor=tensor,
        count=len(column),
        missing=int(column.isna().sum()),
        unique=unique,
    )
    if tensor == NUMERIC_INPUT and len(present):
        values = present.to_numpy(dtype=np.float64)
        profile.mean, profile.std = _num(values.mean()), _num(values.std())
        profile.min, profile.max = _num(values.min()), _num(values.max())
        profile.quantiles = {
            f"p{round(q * 100):02d}": _num(v)
            for q, v in zip(_QUANTILES, np.quantile(values, _QUANTILES), strict=True)
        }
    if tensor != NUMERIC_INPUT or unique <= TOP_CATEGORIES:
        shares = present.astype(str).value_counts(normalize=True).head(TOP_CATEGORIES)
        profile.frequencies = {str(k): round(float(v), 8) for k, v in shares.items()}
    return profile


def predicted_values(
    outputs: Mapping[str, np.ndarray], task_type: str, classes: Sequence[str] | None
) -> pd.Series | None:
    """What the model predicted per row, for prediction drift: the class name (classification),
    the cluster (clustering) or the value (regression); None when the outputs hold neither."""
    if "label" in outputs:
        labels = np.asarray(outputs["label"]).reshape(-1).astype(np.int64)
        if classes:
            names = np.asarray(list(classes), dtype=object)
            valid = (labels >= 0) & (labels < len(names))
            return pd.Series(np.where(valid, names[np.clip(labels, 0, len(names) - 1)], None), dtype=object)
        return pd.Series(labels.astype(str), dtype=object)
    if "prediction" in outputs and task_type == "regression":
        return pd.Series(
            np.asarray(outputs["prediction"], dtype=np.float64).reshape(len(outputs["prediction"]), -1)[:, 0]
        )
    return None


def _prediction_table(
    outputs: Mapping[str, np.ndarray],
    labels: np.ndarray | None,
    task_type: str,
    classes: Sequence[str] | None,
) -> pd.DataFrame | None:
    values = predicted_values(outputs, task_type, classes)
    if values is None:
        return None
    table = pd.DataFrame({"prediction": values})
    if "probabilities" in outputs and task_type == "classification":
        proba = np.asarray(outputs["probabilities"], dtype=np.float64)
        for i in range(proba.shape[1]):
            table[f"probability_{i}"] = proba[:, i]
    if labels is not None and len(labels) == len(table):
        table["true_label"] = np.asarray(labels)
    return table


def _prediction_profile(values: pd.Series, task_type: str) -> PredictionProfile:
    if task_type == "regression":
        numbers = values.to_numpy(dtype=np.float64)
        return PredictionProfile(
            kind="numeric",
            rows=len(numbers),
            mean=_num(numbers.mean()),
            std=_num(numbers.std()),
            quantiles={
                f"p{round(q * 100):02d}": _num(v)
                for q, v in zip(_QUANTILES, np.quantile(numbers, _QUANTILES), strict=True)
            },
        )
    shares = values.astype(str).value_counts(normalize=True).head(TOP_CATEGORIES)
    return PredictionProfile(
        kind="categorical",
        rows=len(values),
        frequencies={str(k): round(float(v), 8) for k, v in shares.items()},
    )


def reference_outputs(
    onnx_path: Path, frame: pd.DataFrame, feature_columns: Mapping[str, Sequence[str]]
) -> dict[str, np.ndarray]:
    """The exported graph's outputs on `frame` (e.g. the test split), by output name."""
    import onnxruntime as ort

    from issueops.packaging.onnx_parity import onnx_feeds

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    double = any(i.type == "tensor(double)" for i in session.get_inputs())
    feeds = onnx_feeds(
        frame, {k: list(v) for k, v in feature_columns.items()}, np.float64 if double else np.float32
    )
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def save_reference_profile(store: ObjectStore, profile: ReferenceProfile, model: str, version: int) -> str:
    """Store the profile where reference_profile_location() says; its location (URI)."""
    with tempfile.TemporaryDirectory(prefix="issueops-profile-") as tmp:
        profile.model, profile.version = model, int(version)
        profile.save(Path(tmp))
        return store.upload_dir(Path(tmp), reference_profile_location(model, version))


def save_run_profile(
    store: ObjectStore,
    run_id: str,
    model: str,
    version: int,
    onnx_path: Path,
    feature_columns: Mapping[str, Sequence[str]],
    *,
    sample_rows: int = SAMPLE_ROWS,
) -> str:
    """Profile a registered version from what its run left in the store (processed/<run_id>/ train
    and test splits and metadata, evaluations/<run_id>/results.json) and its exported graph, and
    save it with the version; its location (URI).

    The graph runs on at most `sample_rows` test rows, the rows the profile would keep anyway, so
    the cost stays bounded whatever the size of the test split.
    """
    import io

    def table(split: str) -> pd.DataFrame:
        key = f"processed/{run_id}/{split}.parquet"
        if not store.exists(key):
            raise NotFound(f"The {split} split of run {run_id} ({key}) is not in the object store.")
        return pd.read_parquet(io.BytesIO(store.get_bytes(key)))

    def document(key: str) -> dict[str, Any]:
        return json.loads(store.get_bytes(key)) if store.exists(key) else {}

    metadata = document(f"processed/{run_id}/metadata.json")
    evaluation = document(f"evaluations/{run_id}/results.json")
    task_type, target = metadata.get("task_type", ""), metadata.get("target")
    seed = int(metadata.get("seed") or 0)
    test = table("test")
    test = test.sample(n=min(sample_rows, len(test)), random_state=seed).reset_index(drop=True)
    classes = metadata.get("classes")
    labels = None
    if target and target in test.columns:
        if task_type == "classification" and classes:
            index = {str(c): i for i, c in enumerate(classes)}
            labels = test[target].astype(str).map(index).fillna(-1).to_numpy(dtype=np.int64)
        elif task_type == "regression":
            labels = pd.to_numeric(test[target], errors="coerce").to_numpy(dtype=np.float64)
    profile = build_reference_profile(
        table("train"),
        feature_columns=feature_columns,
        task_type=task_type,
        test_outputs=reference_outputs(onnx_path, test, feature_columns),
        test_labels=labels,
        classes=classes,
        evaluation_metric=evaluation.get("evaluation_metric"),
        metric_value=evaluation.get("value"),
        sample_rows=sample_rows,
        seed=seed,
    )
    return save_reference_profile(store, profile, model, version)


def load_reference_profile(store: ObjectStore, model: str, version: int) -> ReferenceProfile:
    """The stored profile of a version, or NotFound saying that it has none."""
    location = reference_profile_location(model, version)
    if not store.exists(f"{location}/{PROFILE_FILE}"):
        raise NotFound(
            f"Version {version} of {model} has no reference profile ({location}/): it is saved when a "
            "version is registered, so versions registered before monitoring have none; retrain to get one."
        )
    with tempfile.TemporaryDirectory(prefix="issueops-profile-") as tmp:
        download_dir(store, location, Path(tmp))
        return ReferenceProfile.load(Path(tmp))
