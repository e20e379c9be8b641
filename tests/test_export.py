"""ONNX export with the preprocessing in the graph: parity with the trained model on the test split
for every exportable algorithm, and the refusals (not servable, parity failure: nothing published)."""

import json

import numpy as np
import pandas as pd
import pytest

from issueops.data.prepare import PreparedData, prepare_data
from issueops.errors import Unavailable
from issueops.packaging.onnx import export_model
from issueops.packaging.onnx_parity import NotServable, ParityError, onnx_feeds
from issueops.spec.body import parse_issue_body
from issueops.training.train import load_model, train_model

CASES = {
    "random-forest-classification": "algorithm: random_forest\ndataset_id: sklearn:breast_cancer\nhyperparameters: {n_estimators: 30}",
    # Two trees: probabilities of exactly 0.5 everywhere; the label must break ties like scikit-learn.
    "random-forest-ties": "algorithm: random_forest\ndataset_id: sklearn:breast_cancer\nhyperparameters: {n_estimators: 2}",
    "random-forest-regression": "algorithm: random_forest\ntask_type: regression\ndataset_id: sklearn:diabetes\nhyperparameters: {n_estimators: 30}",
    "xgboost-classification": "algorithm: xgboost\ndataset_id: sklearn:iris\nhyperparameters: {n_estimators: 30}",
    "xgboost-regression": "algorithm: xgboost\ntask_type: regression\ndataset_id: sklearn:diabetes\nhyperparameters: {n_estimators: 30}",
    "linear-regression": "algorithm: linear_regression\ndataset_id: sklearn:diabetes",
    "ridge-regression": "algorithm: linear_regression\ndataset_id: sklearn:diabetes\nhyperparameters: {alpha: 1.0}",
    "mlp-classification": "algorithm: neural_network\ndataset_id: sklearn:wine\nhyperparameters: {epochs: 15}",
    "mlp-regression": "algorithm: neural_network\ntask_type: regression\ndataset_id: sklearn:diabetes\nhyperparameters: {epochs: 15}",
    "random-forest-text-features": "algorithm: random_forest\ndataset_id: mixed.csv\ntarget: label\nhyperparameters: {n_estimators: 20}",
    "mlp-text-features": "algorithm: neural_network\ndataset_id: mixed.csv\ntarget: label\nhyperparameters: {epochs: 10}",
    "xgboost-regression-text-features": "algorithm: xgboost\ntask_type: regression\ndataset_id: mixed.csv\ntarget: amount\nhyperparameters: {n_estimators: 20}",
    "kmeans": "learning_type: unsupervised\nalgorithm: kmeans\ndataset_id: sklearn:iris\nhyperparameters: {n_clusters: 3}",
    "kmeans-text-features": "learning_type: unsupervised\nalgorithm: kmeans\ndataset_id: mixed.csv\nhyperparameters: {n_clusters: 3}",
    "pca": "learning_type: unsupervised\nalgorithm: pca\ntask_type: dimensionality_reduction\ndataset_id: sklearn:wine",
    "autoencoder": "learning_type: unsupervised\nalgorithm: autoencoder\ndataset_id: sklearn:wine\nhyperparameters: {epochs: 10, n_clusters: 3}",
}
OUTPUTS = {
    "classification": ["label", "probabilities"],
    "regression": ["prediction"],
    "kmeans": ["label", "distances"],
    "autoencoder": ["label", "embedding"],
    "pca": ["embedding"],
}


def mixed_table(path) -> None:
    """Numeric and text features, both with missing values."""
    rng = np.random.default_rng(0)
    n = 240
    frame = pd.DataFrame(
        {
            "age": rng.normal(40, 10, n),
            "income": rng.normal(5e4, 1e4, n),
            "city": rng.choice(["paris", "oslo", "rome"], n),
            "plan": rng.choice(["basic", "pro"], n),
        }
    )
    frame.loc[rng.choice(n, 20, replace=False), "age"] = np.nan
    frame.loc[rng.choice(n, 15, replace=False), "city"] = None
    frame["label"] = np.where((frame.city == "oslo") | (frame.age.fillna(40) > 45), "yes", "no")
    frame["amount"] = frame.income / 1000 + (frame.plan == "pro") * 5
    frame.to_csv(path, index=False)


def trained(settings, store, tmp_path, body: str):
    spec = parse_issue_body(
        body if body.startswith("learning_type") else f"learning_type: supervised\n{body}"
    )
    prepare_data(spec, settings, store, tmp_path / "p")
    train_model(spec, tmp_path / "p", tmp_path / "m", run_id="run-1")
    return spec, PreparedData.open(tmp_path / "p").table("test")


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_export_matches_the_trained_model(settings, store, tmp_path, case):
    import onnxruntime as ort

    mixed_table(tmp_path / "mixed.csv")
    body = CASES[case].replace("mixed.csv", str(tmp_path / "mixed.csv"))
    spec, test = trained(settings, store, tmp_path, body)
    result = export_model(tmp_path / "m", test, tmp_path / "model.onnx")
    assert result.parity.passed and result.parity.rows == len(test)

    # Check independently: ONNX Runtime on the file against the model's own predictions.
    model = load_model(tmp_path / "m")
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    torch_model = spec.algorithm in ("neural_network", "autoencoder")
    feeds = onnx_feeds(test, result.feature_columns, np.float32 if torch_model else np.float64)
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))
    features = test[[c for cols in result.feature_columns.values() for c in cols]].copy()
    for column in result.feature_columns.get("categorical", []):
        features[column] = features[column].astype(object).where(features[column].notna(), np.nan)
    kind = spec.task_type if spec.learning_type == "supervised" else spec.algorithm
    assert [o.name for o in result.outputs] == OUTPUTS[kind]
    if "label" in outputs:
        assert np.array_equal(outputs["label"], model.predict(features))
    if "probabilities" in outputs:
        assert np.abs(outputs["probabilities"] - model.predict_proba(features)).max() <= 1e-4
    if "prediction" in outputs:
        expected = model.predict(features)
        assert np.all(
            np.abs(outputs["prediction"].ravel() - expected) <= 1e-4 * np.maximum(1, np.abs(expected))
        )
        assert result.outputs[0].shape == [-1, 1]
    for name in ("distances", "embedding"):
        if name in outputs:
            assert np.abs(outputs[name] - model.transform(features)).max() <= 1e-4
    names = [i.name for i in result.inputs]
    assert names == (["input", "categorical"] if "text" in case else ["input"])
    assert result.inputs[0].datatype == ("FP32" if torch_model else "FP64")
    assert result.standard_ops_only == (
        case in ("mlp-classification", "mlp-regression", "kmeans", "pca", "autoencoder")
    )
    if case == "random-forest-ties":
        ties = np.isclose(model.predict_proba(features).max(axis=1), 0.5)
        assert ties.sum() > 0  # the case exercises what it says


@pytest.mark.parametrize("algorithm", ["dbscan", "tsne"])
def test_transductive_algorithms_are_not_servable(settings, store, tmp_path, algorithm):
    task = "clustering" if algorithm == "dbscan" else "dimensionality_reduction"
    _, test = trained(
        settings,
        store,
        tmp_path,
        f"learning_type: unsupervised\nalgorithm: {algorithm}\ntask_type: {task}\ndataset_id: sklearn:iris",
    )
    with pytest.raises(NotServable, match=f"{algorithm} cannot predict on new data.*not servable"):
        export_model(tmp_path / "m", test, tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()


def test_reinforcement_policy_matches_its_rllib_checkpoint(tmp_path, monkeypatch):
    """One PPO iteration on CartPole (about 10 s with Ray on one CPU), then the exported policy
    against the RLModule restored from the checkpoint, on 256 sampled observations."""
    from issueops.training.reinforcement.environment import prepare_environment

    monkeypatch.setenv("ISSUEOPS_RAY_CPUS", "1")
    spec = parse_issue_body(
        "learning_type: reinforcement\nalgorithm: ppo\nenvironment: CartPole-v1\n"
        "hyperparameters: {training_iterations: 1, train_batch_size: 64, num_env_runners: 0, hidden_units: [16]}"
    )
    prepare_environment(spec, tmp_path / "p")
    train_model(spec, tmp_path / "p", tmp_path / "m", run_id="run-rl")
    result = export_model(tmp_path / "m", None, tmp_path / "model.onnx")
    assert result.parity.passed and result.parity.labels_identical and result.parity.rows == 256
    assert [(t.name, t.datatype, t.shape) for t in result.inputs] == [("obs", "FP32", [-1, 4])]
    assert [(t.name, t.datatype, t.shape) for t in result.outputs] == [
        ("action", "INT64", [-1]),
        ("scores", "FP32", [-1, 2]),
    ]
    assert result.standard_ops_only


def test_algorithms_that_cannot_predict_are_not_servable(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.json").write_text(json.dumps({"algorithm": "dbscan", "servable": False}))
    with pytest.raises(NotServable, match="dbscan cannot predict on new data.*not servable"):
        export_model(tmp_path / "m", pd.DataFrame(), tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()
    (tmp_path / "m" / "model.json").write_text(
        json.dumps({"algorithm": "ppo", "servable": True, "format": "rllib"})
    )
    with pytest.raises(Unavailable, match="ONNX export for ppo"):
        export_model(tmp_path / "m", pd.DataFrame(), tmp_path / "model.onnx")


def test_a_parity_failure_publishes_nothing(settings, store, tmp_path, monkeypatch):
    """A converter that gets the model wrong (here: it converts a forest fitted on shuffled labels)."""
    import issueops.packaging.onnx as export

    _, test = trained(settings, store, tmp_path, CASES["random-forest-classification"])
    convert = export._estimator_graph

    def wrong_estimator_graph(estimator, n_features, classify):
        impostor = type(estimator)(n_estimators=5, random_state=1).fit(
            np.random.default_rng(1).normal(size=(60, n_features)), np.arange(60) % 2
        )
        return convert(impostor, n_features, classify)

    monkeypatch.setattr(export, "_estimator_graph", wrong_estimator_graph)
    with pytest.raises(ParityError, match="disagrees with the trained model.*Nothing was published"):
        export_model(tmp_path / "m", test, tmp_path / "out" / "model.onnx")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_package_step_fails_on_parity_and_nothing_is_deployed(settings, store, tmp_path, monkeypatch):
    """Through the registry: the package step fails, no repository reaches the store, deploy refuses."""
    import issueops.packaging.onnx as export
    from issueops.errors import NotFound
    from issueops.pipeline.runs import RunRecord
    from issueops.pipeline.steps import deploy_step, package_step
    from tests.test_serving import RF_BODY, train_and_register

    registered = train_and_register(RF_BODY.format(n=5, extra=""))
    convert = export._estimator_graph
    monkeypatch.setattr(
        export,
        "_estimator_graph",
        lambda estimator, n, classify: convert(
            type(estimator)(n_estimators=3, random_state=2).fit(np.eye(n)[:2].repeat(5, 0), [0, 1] * 5),
            n,
            classify,
        ),
    )
    run_id = registered["run_id"]
    with pytest.raises(ParityError):
        package_step(run_id)
    record = RunRecord(store, run_id)
    assert record.read("steps/package.json")["status"] == "failed"
    assert record.error()["step"] == "package" and "Nothing was published" in record.error()["problems"][0]
    assert store.list("triton") == []
    with pytest.raises(NotFound, match="no package"):
        deploy_step(run_id)
    assert record.read("serving.json") is None
