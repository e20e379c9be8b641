"""Resolve a spec's dataset_id to tables: sklearn:<name>, an id under datasets/, a path or s3:// URI."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from issueops.config import Settings
from issueops.errors import DatasetError, ExternalServiceError, NotFound
from issueops.store import ObjectStore, S3Store

SKLEARN_DATASETS = ("iris", "wine", "breast_cancer", "digits", "diabetes")
TABLE_SUFFIXES = (".csv", ".parquet")
MAX_DATASET_BYTES = Settings.from_env().max_dataset_mb * 1024 * 1024
_STORE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass
class LoadedDataset:
    train: pd.DataFrame
    test: pd.DataFrame | None
    source: str
    target_hint: str | None = None


def load_dataset(dataset_id: str, settings: Settings, store: ObjectStore) -> LoadedDataset:
    """Tables for `dataset_id`, or a DatasetError that says what was looked for and where."""
    if dataset_id.startswith("sklearn:"):
        return _load_sklearn(dataset_id.split(":", 1)[1])
    if dataset_id.startswith("s3://"):
        return _load_s3_uri(dataset_id, settings)
    if _STORE_ID.fullmatch(dataset_id) and Path(dataset_id).suffix not in TABLE_SUFFIXES:
        keys = _store_tables(store, dataset_id)
        if keys:
            return _from_store(store, dataset_id, keys)
        if not Path(dataset_id).exists():
            raise DatasetError(
                f"Dataset '{dataset_id}' was not found: there is no datasets/{dataset_id}/raw/train.csv "
                f"or train.parquet in the object store ({store.uri('datasets')})."
            )
    return _load_path(dataset_id, settings)


def _load_sklearn(name: str) -> LoadedDataset:
    if name not in SKLEARN_DATASETS:
        raise DatasetError(
            f"'sklearn:{name[:40]}' is not a bundled dataset; choose one of: "
            + ", ".join(f"sklearn:{n}" for n in SKLEARN_DATASETS)
            + "."
        )
    import sklearn.datasets

    bunch = getattr(sklearn.datasets, f"load_{name}")(as_frame=True)
    frame = bunch.frame.copy()
    frame.columns = [str(c) for c in frame.columns]
    return LoadedDataset(train=frame, test=None, source=f"sklearn:{name}", target_hint="target")


def find_tables(prefix: str, exists) -> dict[str, str]:
    """`train` and `test` tables (.csv, else .parquet) under `prefix`, where `exists(path)` says so."""
    found: dict[str, str] = {}
    for split in ("train", "test"):
        for suffix in TABLE_SUFFIXES:
            candidate = f"{prefix.rstrip('/')}/{split}{suffix}"
            if split not in found and exists(candidate):
                found[split] = candidate
    return found


def _store_tables(store: ObjectStore, dataset_id: str) -> dict[str, str]:
    return find_tables(f"datasets/{dataset_id}/raw", store.exists)


def _from_store(store: ObjectStore, dataset_id: str, keys: dict[str, str]) -> LoadedDataset:
    if "train" not in keys:
        raise DatasetError(f"Dataset '{dataset_id}' has a test table but no train table.")
    tables = {}
    for split, key in keys.items():
        if store.size(key) > MAX_DATASET_BYTES:
            raise DatasetError(f"{key} is larger than the {MAX_DATASET_BYTES >> 20} MiB limit.")
        tables[split] = read_table(store.get_bytes(key), key)
    return LoadedDataset(tables["train"], tables.get("test"), source=store.uri(f"datasets/{dataset_id}/raw"))


def _load_s3_uri(uri: str, settings: Settings) -> LoadedDataset:
    match = re.fullmatch(r"s3://([a-z0-9][a-z0-9.-]{1,62})/(.+)", uri)
    if not match:
        raise DatasetError(f"'{uri[:100]}' is not a valid s3://bucket/key URI.")
    bucket, key = match.groups()
    store = S3Store(bucket, endpoint=settings.s3_endpoint)
    try:
        if key.endswith(TABLE_SUFFIXES):
            if store.size(key) > MAX_DATASET_BYTES:
                raise DatasetError(f"{uri} is larger than the {MAX_DATASET_BYTES >> 20} MiB limit.")
            return LoadedDataset(read_table(store.get_bytes(key), key), None, source=uri)
        keys = find_tables(key, store.exists)
        if "train" not in keys:
            raise DatasetError(f"No train.csv or train.parquet under {uri}.")
        tables = {s: read_table(store.get_bytes(k), k) for s, k in keys.items()}
        return LoadedDataset(tables["train"], tables.get("test"), source=uri)
    except NotFound:
        raise DatasetError(f"Dataset {uri[:200]} was not found.") from None
    except ExternalServiceError as exc:
        raise DatasetError(f"Dataset {uri[:200]} could not be read: {exc}") from None


def _load_path(dataset_id: str, settings: Settings) -> LoadedDataset:
    path = Path(dataset_id).expanduser()
    resolved = path.resolve()
    if not any(resolved == root or root in resolved.parents for root in settings.data_roots):
        raise DatasetError(
            f"'{dataset_id[:200]}' is outside the allowed data roots "
            f"({', '.join(str(r) for r in settings.data_roots)}); set ISSUEOPS_DATA_ROOTS to allow it."
        )
    if resolved.is_dir():
        found = find_tables(str(resolved), lambda path: Path(path).is_file())
        tables = {split: _read_file(Path(path)) for split, path in found.items()}
        if "train" not in tables:
            raise DatasetError(f"No train.csv or train.parquet in {dataset_id[:200]}.")
        return LoadedDataset(tables["train"], tables.get("test"), source=str(resolved))
    if not resolved.is_file():
        raise DatasetError(f"Dataset '{dataset_id[:200]}' was not found.")
    if resolved.suffix not in TABLE_SUFFIXES:
        raise DatasetError(f"'{resolved.name}' is not a .csv or .parquet file.")
    return LoadedDataset(_read_file(resolved), None, source=str(resolved))


def _read_file(path: Path) -> pd.DataFrame:
    if path.stat().st_size > MAX_DATASET_BYTES:
        raise DatasetError(f"{path.name} is larger than the {MAX_DATASET_BYTES >> 20} MiB limit.")
    return read_table(path.read_bytes(), path.name)


def read_table(data: bytes, name: str) -> pd.DataFrame:
    """A CSV or Parquet table, or a DatasetError naming the file and the reason."""
    try:
        if name.endswith(".parquet"):
            return pd.read_parquet(io.BytesIO(data))
        return pd.read_csv(io.BytesIO(data))
    except pd.errors.EmptyDataError:
        raise DatasetError(f"{name} is empty.") from None
    except Exception as exc:  # pandas/pyarrow raise many types for a malformed file
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise DatasetError(f"{name} could not be read as a table: {reason}") from None
