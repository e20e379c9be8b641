"""Supervised training, evaluation and judge, called as plain functions (no KFP)."""

import json

import numpy as np
import pytest

from issueops.data.prepare import prepare_data
from issueops.evaluation.judge import judge
from issueops.evaluation.supervised import EvaluationResult, evaluate_model
from issueops.spec.body import parse_issue_body
from issueops.training.train import load_model, train_model


def run_steps(settings, store, tmp_path, body):
    spec = parse_issue_body(body)
    prepare_data(spec, settings, store, tmp_path / "p")
    trained = train_model(spec, tmp_path / "p", tmp_path / "m")
    return spec, trained, evaluate_model(spec, tmp_path / "p", tmp_path / "m", tmp_path / "e")


CASES = {
    "rf-classification": ("random_forest", "sklearn:breast_cancer", "", "accuracy", 0.9),
    "xgb-classification": ("xgboost", "sklearn:iris", "", "accuracy", 0.85),
    "mlp-classification": (
        "neural_network",
        "sklearn:wine",
        "hyperparameters: {epochs: 40}",
        "accuracy",
        0.85,
    ),
    "linear-regression": ("linear_regression", "sklearn:diabetes", "", "r2", 0.3),
    "ridge-regression": ("linear_regression", "sklearn:diabetes", "hyperparameters: {alpha: 1.0}", "r2", 0.3),
    "xgb-regression": ("xgboost", "sklearn:diabetes", "task_type: regression", "r2", 0.2),
    "mlp-regression": (
        "neural_network",
        "sklearn:diabetes",
        "task_type: regression\nhyperparameters: {epochs: 60}",
        "r2",
        0.2,
    ),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_supervised_algorithm_trains_and_scores(settings, store, tmp_path, case):
    algorithm, dataset, extra, metric, floor = CASES[case]
    spec, trained, result = run_steps(
        settings,
        store,
        tmp_path,
        f"learning_type: supervised\nalgorithm: {algorithm}\ndataset_id: {dataset}\n{extra}",
    )
    assert result.evaluation_metric == metric
    assert result.value >= floor
    saved = json.loads((tmp_path / "e" / "results.json").read_text())
    assert saved["metrics"] == result.metrics
    for plot in result.plots:
        assert (tmp_path / "e" / plot).read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "m" / "model.joblib").exists() and trained.manifest["algorithm"] == algorithm
    if spec.task_type == "classification":
        assert set(result.metrics) == {"accuracy", "precision", "recall", "f1_score", "auc_roc"}
        assert {"confusion_matrix.png", "roc_curve.png"} <= set(result.plots)
    else:
        assert set(result.metrics) == {"r2", "rmse", "mae", "mape"}
        assert result.plots == ["residuals.png"]


def test_model_keeps_its_preprocessing_and_is_deterministic(settings, store, tmp_path):
    body = "learning_type: supervised\nalgorithm: neural_network\ndataset_id: sklearn:wine\nhyperparameters: {epochs: 20}"
    _, _, first = run_steps(settings, store, tmp_path / "a", body)
    _, _, second = run_steps(settings, store, tmp_path / "b", body)
    assert first.metrics == second.metrics
    model = load_model(tmp_path / "a" / "m")
    raw = __import__("pandas").read_parquet(tmp_path / "a" / "p" / "test.parquet").drop(columns="target")
    assert model.predict_proba(raw).shape == (len(raw), 3)  # raw features in: preprocessing is inside


def test_multiclass_auc_is_one_vs_rest(settings, store, tmp_path):
    _, _, result = run_steps(
        settings,
        store,
        tmp_path,
        "learning_type: supervised\nalgorithm: random_forest\ndataset_id: sklearn:iris",
    )
    assert 0.9 <= result.metrics["auc_roc"] <= 1.0
    assert len(result.details["roc"]) == 3
    assert np.array(result.details["confusion_matrix"]).sum() == result.details["n_test"]
    assert EvaluationResult.read(tmp_path / "e").value == result.value


def test_judge_decisions():
    assert judge("accuracy", 0.9, 0.85, attempt=1, max_retry=3).decision == "pass"
    retrain = judge("accuracy", 0.8, 0.85, attempt=1, max_retry=3)
    assert retrain.decision == "retrain" and retrain.next_action == "notify_operator"
    assert "3 retries left" in retrain.message
    assert judge("accuracy", 0.8, 0.85, attempt=4, max_retry=3).decision == "fail"
    assert judge("accuracy", 0.8, 0.85, attempt=1, max_retry=0).decision == "fail"
    assert judge("rmse", 40.0, 50.0, attempt=1, max_retry=3).decision == "pass"  # lower is better
    assert judge("rmse", 60.0, 50.0, attempt=1, max_retry=3).decision == "retrain"
    no_threshold = judge("silhouette", 0.4, None, attempt=1, max_retry=3)
    assert no_threshold.decision == "pass" and "No evaluation_threshold" in no_threshold.message
    assert judge("accuracy", float("nan"), 0.5, attempt=1, max_retry=0).decision == "fail"
