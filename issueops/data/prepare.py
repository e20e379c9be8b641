"""prepare_data: validate a dataset for the spec, split it, fit preprocessing on train only.

Writes into one directory (a KFP Dataset artifact, mirrored to processed/<run> in the store):
train/val/test tables with the original columns, the fitted preprocessor, metadata.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd

from issueops.config import Settings
from issueops.data.sources import LoadedDataset, load_dataset
from issueops.errors import DatasetError
from issueops.spec.body import TrainingSpec
from issueops.store import ObjectStore

MIN_ROWS = 20
MIN_ROWS_PER_CLASS = 3
MAX_CLASSES = 200
MAX_CATEGORY_LEVELS = 1000
TARGET_CANDIDATES = ("target", "label", "y", "class")
SPLITS = ("train", "val", "test")


@dataclass
class PreparedData:
    directory: Path
    metadata: dict[str, Any]

    def table(self, split: str) -> pd.DataFrame:
        return pd.read_parquet(self.directory / f"{split}.parquet")

    @classmethod
    def open(cls, directory: Path) -> PreparedData:
        directory = Path(directory)
        return cls(directory, json.loads((directory / "metadata.json").read_text()))

    def features(self, split: str) -> pd.DataFrame:
        return self.table(split)[self.metadata["feature_columns"]]

    def labels(self, split: str) -> np.ndarray:
        """Targets; for classification encoded as 0..n-1 in the order of metadata['classes']."""
        y = self.table(split)[self.metadata["target"]]
        if self.metadata["task_type"] == "classification":
            index = {c: i for i, c in enumerate(self.metadata["classes"])}
            return y.astype(str).map(index).to_numpy(dtype=np.int64)
        return y.to_numpy(dtype=np.float64)

    @property
    def preprocessor_path(self) -> Path:
        return self.directory / "preprocessor.joblib"


def check_dataset(spec: TrainingSpec, settings: Settings, store: ObjectStore) -> tuple[LoadedDataset, dict]:
    """Load and validate the dataset for `spec`; every problem at once, as a DatasetError."""
    loaded = load_dataset(spec.dataset_id, settings, store)
    frame = loaded.train
    problems: list[str] = []
    if frame.empty or frame.shape[1] == 0:
        raise DatasetError(f"Dataset {spec.dataset_id} has no rows or no columns.")
    frame.columns = [str(c) for c in frame.columns]
    if frame.columns.duplicated().any():
        dup = sorted(set(frame.columns[frame.columns.duplicated()]))
        problems.append(f"duplicate column names: {', '.join(dup[:5])}.")

    target = None
    if spec.learning_type == "supervised":
        target = spec.target or default_target(loaded)
        if target is None:
            problems.append(
                f"no target column: set 'target' to one of {', '.join(map(str, frame.columns[:20]))}."
            )
        elif target not in frame.columns:
            problems.append(
                f"target column '{target}' is not in the dataset; columns are "
                f"{', '.join(map(str, frame.columns[:20]))}."
            )
            target = None
    # Known labels of an unsupervised dataset are kept aside for external scores, never used as features.
    label_column = loaded.target_hint if spec.learning_type == "unsupervised" else None
    if label_column not in frame.columns:
        label_column = None
    features = [c for c in frame.columns if c not in (target, label_column)]
    if not features:
        problems.append("the dataset has no feature columns besides the target.")

    empty = [c for c in frame.columns if frame[c].isna().all()]
    if empty:
        problems.append(f"column(s) {', '.join(empty[:10])} hold no values at all; remove them.")
    kinds = {}
    for c in features:
        kinds[c] = _column_kind(frame[c])
        if kinds[c] == "unsupported":
            problems.append(f"column '{c}' has type {frame[c].dtype}, which cannot be used as a feature.")
        elif kinds[c] == "categorical" and frame[c].nunique() > MAX_CATEGORY_LEVELS:
            problems.append(
                f"column '{c}' has {frame[c].nunique()} distinct text values (more than "
                f"{MAX_CATEGORY_LEVELS}); it looks like an identifier, remove it."
            )

    rows = len(frame) - (int(frame[target].isna().sum()) if target and target not in empty else 0)
    if rows < MIN_ROWS:
        problems.append(f"the dataset has {rows} usable rows; at least {MIN_ROWS} are needed.")

    report: dict[str, Any] = {"target": target, "label_column": label_column, "feature_kinds": kinds}
    if target and target not in empty and rows >= MIN_ROWS:
        y = frame[target].dropna()
        if spec.task_type == "classification":
            counts = y.astype(str).value_counts()
            report["class_counts"] = {str(k): int(v) for k, v in counts.items()}
            if len(counts) < 2:
                problems.append(
                    f"target '{target}' has only one class ({counts.index[0]}); classification needs two or more."
                )
            elif len(counts) > min(MAX_CLASSES, max(10, len(y) // 2)):
                problems.append(
                    f"target '{target}' has {len(counts)} distinct values; "
                    "for a continuous target use task_type: regression."
                )
            elif counts.min() < MIN_ROWS_PER_CLASS:
                problems.append(
                    f"class '{counts.idxmin()}' has {counts.min()} rows; every class needs at least "
                    f"{MIN_ROWS_PER_CLASS} for a stratified split."
                )
            else:
                report["imbalance_ratio"] = round(float(counts.max() / counts.min()), 3)
        elif spec.task_type == "regression" and not pd.api.types.is_numeric_dtype(y):
            problems.append(f"target '{target}' is not numeric; regression needs a numeric target.")
    if loaded.test is not None:
        missing = [c for c in frame.columns if c not in loaded.test.columns and c != target]
        if missing:
            problems.append(f"the test table lacks column(s) {', '.join(missing[:10])}.")
    if problems:
        raise DatasetError(problems[0], problems=[f"Dataset {spec.dataset_id}: {p}" for p in problems])
    return loaded, report


def default_target(loaded: LoadedDataset) -> str | None:
    """The target column a supervised spec that names none gets: the dataset's own, else a usual name."""
    columns = [str(c) for c in loaded.train.columns]
    return loaded.target_hint or next((c for c in TARGET_CANDIDATES if c in columns), None)


@dataclass
class DatasetDescription:
    """What a dataset holds, read without a spec: enough to write one."""

    dataset_id: str
    source: str
    rows: int
    test_rows: int | None  # rows of its own test table, when it comes with one
    columns: dict[str, str]  # name -> numeric | categorical | unsupported
    target: str | None  # what a supervised spec that names no target would use
    missing_values: int


def describe_dataset(dataset_id: str, settings: Settings, store: ObjectStore) -> DatasetDescription:
    """Rows, columns and their kinds, and the default target of a dataset; DatasetError if unreadable."""
    loaded = load_dataset(dataset_id, settings, store)
    frame = loaded.train
    return DatasetDescription(
        dataset_id=dataset_id,
        source=loaded.source,
        rows=len(frame),
        test_rows=None if loaded.test is None else len(loaded.test),
        columns={str(c): _column_kind(frame.iloc[:, i]) for i, c in enumerate(frame.columns)},
        target=default_target(loaded),
        missing_values=int(frame.isna().sum().sum()),
    )


def _column_kind(column: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(column):
        return "categorical"
    if pd.api.types.is_numeric_dtype(column):
        return "numeric"
    if pd.api.types.is_object_dtype(column) or isinstance(column.dtype, pd.CategoricalDtype):
        return "categorical"
    if pd.api.types.is_string_dtype(column):
        return "categorical"
    return "unsupported"


def build_preprocessor(kinds: dict[str, str]):
    """Impute + scale numeric, impute + one-hot categoricals; unfitted."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric = [c for c, k in kinds.items() if k == "numeric"]
    categorical = [c for c, k in kinds.items() if k == "categorical"]
    transformers = []
    if numeric:
        transformers.append(
            (
                "numeric",
                Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]),
                numeric,
            )
        )
    if categorical:
        transformers.append(
            (
                "categorical",
                Pipeline(
                    [
                        ("impute", SimpleImputer(strategy="most_frequent")),
                        ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
                    ]
                ),
                categorical,
            )
        )
    return ColumnTransformer(transformers, remainder="drop", verbose_feature_names_out=False)


def prepare_data(spec: TrainingSpec, settings: Settings, store: ObjectStore, out_dir: Path) -> PreparedData:
    """Validate, split (stratified, seeded), fit preprocessing on train; write everything to out_dir."""
    from sklearn.model_selection import train_test_split

    loaded, report = check_dataset(spec, settings, store)
    target = report["target"]
    frame = _as_features(loaded.train.dropna(subset=[target]) if target else loaded.train, report)
    stratify = frame[target].astype(str) if spec.task_type == "classification" else None
    test = None if loaded.test is None else _as_features(loaded.test, report)
    if test is None:
        rest, test = train_test_split(
            frame, test_size=spec.test_size, random_state=spec.seed, stratify=stratify
        )
    else:
        rest = frame
    val_fraction = (
        spec.validation_size / (1 - spec.test_size) if loaded.test is None else spec.validation_size
    )
    stratify_rest = rest[target].astype(str) if spec.task_type == "classification" else None
    train, val = train_test_split(
        rest, test_size=val_fraction, random_state=spec.seed, stratify=stratify_rest
    )

    features = list(report["feature_kinds"])
    preprocessor = build_preprocessor(report["feature_kinds"]).fit(train[features])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, table in zip(SPLITS, (train, val, test), strict=True):
        table.reset_index(drop=True).to_parquet(out_dir / f"{name}.parquet", index=False)
    joblib.dump(preprocessor, out_dir / "preprocessor.joblib")

    metadata = {
        "dataset_id": spec.dataset_id,
        "source": loaded.source,
        "learning_type": spec.learning_type,
        "task_type": spec.task_type,
        "target": target,
        "label_column": report["label_column"],
        "feature_columns": features,
        "feature_kinds": report["feature_kinds"],
        "num_samples": int(len(frame)),
        "num_features": len(features),
        "num_features_processed": int(len(preprocessor.get_feature_names_out())),
        "rows": {"train": len(train), "val": len(val), "test": len(test)},
        "missing_values": {c: int(v) for c, v in frame.isna().sum().items() if v},
        "columns": {c: _column_stats(frame[c]) for c in frame.columns},
        "seed": spec.seed,
    }
    if spec.task_type == "classification":
        metadata["classes"] = sorted(frame[target].astype(str).unique().tolist(), key=_natural)
        metadata["class_counts"] = report["class_counts"]
        metadata["imbalance_ratio"] = report.get("imbalance_ratio")
    (out_dir / "metadata.json").write_text(json.dumps(metadata, indent=2, default=str))
    return PreparedData(out_dir, metadata)


def _as_features(table: pd.DataFrame, report: dict) -> pd.DataFrame:
    """Categorical features as text (NaN kept for the imputer): one dtype for training and serving."""
    table = table.copy()
    for column, kind in report["feature_kinds"].items():
        if kind == "categorical" and column in table:
            table[column] = table[column].where(table[column].isna(), table[column].astype(str))
    return table


def _natural(value: str):
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


def _column_stats(column: pd.Series) -> dict[str, Any]:
    stats: dict[str, Any] = {"dtype": str(column.dtype), "missing": int(column.isna().sum())}
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        desc = column.describe()
        stats.update({k: _num(desc.get(k)) for k in ("mean", "std", "min", "max")})
    else:
        stats["distinct"] = int(column.nunique())
    return stats


def _num(value) -> float | None:
    return None if value is None or pd.isna(value) else round(float(value), 6)
