"""Supervised training: the estimator for (algorithm, task), fitted after the saved preprocessing."""

from __future__ import annotations

from typing import Any

import joblib
import numpy as np
from sklearn.pipeline import Pipeline

from issueops.data.prepare import PreparedData
from issueops.spec.body import TrainingSpec
from issueops.spec.catalog import resolved_hyperparameters


def make_estimator(spec: TrainingSpec, params: dict[str, Any], n_jobs: int):
    algorithm, task = spec.algorithm, spec.task_type
    if algorithm == "random_forest":
        from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

        cls = RandomForestClassifier if task == "classification" else RandomForestRegressor
        return cls(
            n_estimators=params["n_estimators"],
            max_depth=params["max_depth"],
            min_samples_split=params["min_samples_split"],
            min_samples_leaf=params["min_samples_leaf"],
            max_features=None if params["max_features"] == "all" else params["max_features"],
            random_state=params["random_state"],
            n_jobs=n_jobs,
        )
    if algorithm == "xgboost":
        from xgboost import XGBClassifier, XGBRegressor

        cls = XGBClassifier if task == "classification" else XGBRegressor
        return cls(
            tree_method="hist",
            n_jobs=n_jobs,
            **{k: v for k, v in params.items() if k != "random_state"},
            random_state=params["random_state"],
        )
    if algorithm == "neural_network":
        from issueops.training.torch_mlp import TorchMLPClassifier, TorchMLPRegressor

        cls = TorchMLPClassifier if task == "classification" else TorchMLPRegressor
        return cls(**{**params, "hidden_units": tuple(params["hidden_units"])})
    if algorithm == "linear_regression":
        from sklearn.linear_model import LinearRegression, Ridge

        if params["alpha"] > 0:
            return Ridge(alpha=params["alpha"], fit_intercept=params["fit_intercept"])
        return LinearRegression(fit_intercept=params["fit_intercept"])
    raise ValueError(f"no supervised trainer for {algorithm}")


def train_supervised(spec: TrainingSpec, prepared: PreparedData, n_jobs: int = -1) -> tuple[Pipeline, dict]:
    """The fitted Pipeline(preprocess, model) and training metrics."""
    params = resolved_hyperparameters(spec.algo, spec.hyperparameters)
    preprocessor = joblib.load(prepared.preprocessor_path)
    X_train = preprocessor.transform(prepared.features("train"))
    y_train = prepared.labels("train")
    X_val = preprocessor.transform(prepared.features("val"))
    y_val = prepared.labels("val")
    estimator = make_estimator(spec, params, n_jobs)
    if spec.algorithm == "neural_network":
        estimator.fit(X_train, y_train, X_val=X_val, y_val=y_val)
    else:
        estimator.fit(X_train, y_train)
    pipeline = Pipeline([("preprocess", preprocessor), ("model", estimator)])
    metrics = {"train_" + k: v for k, v in _score(estimator, X_train, y_train, spec.task_type).items()}
    metrics.update({"val_" + k: v for k, v in _score(estimator, X_val, y_val, spec.task_type).items()})
    return pipeline, {"hyperparameters": params, "training_metrics": metrics}


def _score(estimator, X, y, task: str) -> dict[str, float]:
    pred = estimator.predict(X)
    if task == "classification":
        return {"accuracy": round(float(np.mean(pred == y)), 6)}
    residual = y - pred
    total = float(np.sum((y - y.mean()) ** 2)) or 1.0
    return {"r2": round(1 - float(np.sum(residual**2)) / total, 6)}
