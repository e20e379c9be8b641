"""Object store, dataset resolution and prepare_data, including the bad datasets named in the issue."""

import json

import numpy as np
import pandas as pd
import pytest

from issueops.data.prepare import PreparedData, check_dataset, prepare_data
from issueops.errors import DatasetError, InvalidInput
from issueops.spec.body import parse_issue_body
from issueops.store import LocalStore, S3Store, safe_key


def spec_for(dataset_id: str, algorithm="random_forest", extra=""):
    return parse_issue_body(
        f"learning_type: supervised\nalgorithm: {algorithm}\ndataset_id: '{dataset_id}'\n{extra}"
    )


def write_csv(path, frame):
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path


def tabular(rows=60, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "age": rng.integers(18, 80, rows).astype(float),
            "city": rng.choice(["tokyo", "osaka", "kyoto"], rows),
            "income": rng.normal(50, 10, rows),
            "label": rng.choice(["yes", "no"], rows),
        }
    )


def test_store_keys_cannot_escape():
    for bad in ("../etc/passwd", "a/../../b", "", "/", "a/.hidden/../x"):
        with pytest.raises(InvalidInput):
            safe_key(bad)
    assert safe_key("/models/run-1/model.onnx") == "models/run-1/model.onnx"


def test_local_store_roundtrip(tmp_path):
    store = LocalStore(tmp_path)
    store.put_bytes("datasets/x/raw/train.csv", b"a,b\n1,2\n")
    assert store.exists("datasets/x/raw/train.csv")
    assert store.list("datasets/x") == ["datasets/x/raw/train.csv"]
    assert store.get_bytes("datasets/x/raw/train.csv") == b"a,b\n1,2\n"


def test_sklearn_dataset_prepared_with_stratified_split(settings, store, tmp_path):
    spec = spec_for("sklearn:breast_cancer")
    prepared = prepare_data(spec, settings, store, tmp_path / "p")
    meta = prepared.metadata
    assert meta["rows"] == {"train": 398, "val": 57, "test": 114}
    assert meta["classes"] == ["0", "1"]
    assert meta["num_features"] == 30
    ratio = [np.mean(prepared.labels(s)) for s in ("train", "test")]
    assert abs(ratio[0] - ratio[1]) < 0.02  # stratified
    again = prepare_data(spec, settings, store, tmp_path / "q")
    assert again.table("test").equals(prepared.table("test"))  # seeded


def test_store_dataset_with_categoricals_and_missing_values(settings, store, tmp_path):
    frame = tabular()
    frame.loc[:4, "age"] = np.nan
    frame.loc[5:7, "city"] = np.nan
    store.put_bytes("datasets/churn-001/raw/train.csv", frame.to_csv(index=False).encode())
    prepared = prepare_data(spec_for("churn-001"), settings, store, tmp_path / "p")
    meta = prepared.metadata
    assert meta["target"] == "label"
    assert meta["feature_kinds"] == {"age": "numeric", "city": "categorical", "income": "numeric"}
    assert meta["missing_values"] == {"age": 5, "city": 3}
    assert meta["num_features_processed"] == 2 + 3  # numeric + one-hot cities
    assert (tmp_path / "p" / "preprocessor.joblib").exists()
    assert json.loads((tmp_path / "p" / "metadata.json").read_text())["columns"]["age"]["missing"] == 5


def test_local_path_and_directory(settings, store, tmp_path):
    path = write_csv(tmp_path / "data" / "train.csv", tabular())
    write_csv(tmp_path / "data" / "test.csv", tabular(30, seed=1))
    assert check_dataset(spec_for(str(path)), settings, store)[1]["target"] == "label"
    prepared = prepare_data(spec_for(str(tmp_path / "data")), settings, store, tmp_path / "p")
    assert prepared.metadata["rows"]["test"] == 30  # the given test table is used as is


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (tabular().drop(columns="label"), "no target column"),
        (tabular().assign(empty=np.nan), "hold no values at all"),
        (tabular().assign(label="yes"), "only one class"),
        (tabular(3), "3 usable rows"),
    ],
    ids=["no-target", "all-nan-column", "one-class", "three-rows"],
)
def test_bad_csv_is_refused_with_a_reason(settings, store, tmp_path, frame, message):
    path = write_csv(tmp_path / "bad.csv", frame)
    with pytest.raises(DatasetError) as err:
        prepare_data(spec_for(str(path)), settings, store, tmp_path / "out")
    assert any(message in p for p in err.value.problems)
    assert not (tmp_path / "out").exists()


def test_named_target_missing(settings, store, tmp_path):
    path = write_csv(tmp_path / "d.csv", tabular())
    with pytest.raises(DatasetError, match="'churned' is not in the dataset"):
        check_dataset(spec_for(str(path), extra="target: churned"), settings, store)


def test_regression_target_must_be_numeric(settings, store, tmp_path):
    path = write_csv(tmp_path / "d.csv", tabular())
    with pytest.raises(DatasetError, match="not numeric"):
        check_dataset(spec_for(str(path), "linear_regression"), settings, store)


def test_continuous_target_for_classification_suggests_regression(settings, store):
    with pytest.raises(DatasetError, match="task_type: regression"):
        check_dataset(spec_for("sklearn:diabetes"), settings, store)


def test_missing_dataset_and_paths_outside_roots(settings, store):
    with pytest.raises(DatasetError, match="was not found"):
        check_dataset(spec_for("no-such-dataset"), settings, store)
    with pytest.raises(DatasetError, match="outside the allowed data roots"):
        check_dataset(spec_for("../../etc/passwd"), settings, store)
    with pytest.raises(DatasetError, match="outside the allowed data roots"):
        check_dataset(spec_for("/etc/passwd"), settings, store)
    with pytest.raises(DatasetError, match="not a bundled dataset"):
        check_dataset(spec_for("sklearn:mnist"), settings, store)


def test_garbage_file_is_a_clear_error(settings, store, tmp_path):
    path = tmp_path / "junk.parquet"
    path.write_bytes(b"\x00\x01not parquet at all")
    with pytest.raises(DatasetError, match="could not be read as a table"):
        check_dataset(spec_for(str(path)), settings, store)


def test_dataset_from_real_s3(s3_endpoint, monkeypatch, tmp_path, home):
    from issueops.config import Settings
    from issueops.store import open_store

    monkeypatch.setenv("ISSUEOPS_S3_ENDPOINT", s3_endpoint)
    monkeypatch.setenv("ISSUEOPS_S3_BUCKET", "issueops-test")
    settings = Settings.from_env()
    store = open_store(settings)
    assert isinstance(store, S3Store)
    store.client.create_bucket(Bucket="issueops-test")
    store.put_bytes("datasets/churn-s3/raw/train.csv", tabular(80).to_csv(index=False).encode())
    prepared = prepare_data(spec_for("churn-s3"), settings, store, tmp_path / "p")
    assert prepared.metadata["source"] == "s3://issueops-test/datasets/churn-s3/raw"
    store.upload_dir(tmp_path / "p", "processed/run-1")
    assert "processed/run-1/metadata.json" in store.list("processed/run-1")
    by_uri = check_dataset(spec_for("s3://issueops-test/datasets/churn-s3/raw/train.csv"), settings, store)
    assert by_uri[1]["target"] == "label"
    with pytest.raises(DatasetError, match="was not found"):
        check_dataset(spec_for("s3://issueops-test/datasets/nothing/train.csv"), settings, store)
    assert PreparedData.open(tmp_path / "p").labels("train").dtype == np.int64
