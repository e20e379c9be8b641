"""evaluate: metrics on the held-out test split, results.json and plots in one directory."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from issueops.prepare import PreparedData
from issueops.spec import TrainingSpec
from issueops.training import load_model, read_manifest

RESULTS = "results.json"


@dataclass
class EvaluationResult:
    evaluation_metric: str
    value: float | None
    metrics: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)
    plots: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def read(cls, directory: Path) -> EvaluationResult:
        return cls(**json.loads((Path(directory) / RESULTS).read_text()))


def evaluate_model(
    spec: TrainingSpec, prepared_dir: Path, model_dir: Path, out_dir: Path
) -> EvaluationResult:
    """Compute the metrics for the spec's task; write results.json and PNG plots into out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if spec.learning_type == "supervised":
        metrics, details, plots = _evaluate_supervised(
            spec, PreparedData.open(prepared_dir), model_dir, out_dir
        )
    elif spec.learning_type == "unsupervised":
        from issueops.training.unsupervised import evaluate_unsupervised

        metrics, details, plots = evaluate_unsupervised(
            spec, PreparedData.open(prepared_dir), model_dir, out_dir
        )
    else:
        from issueops.training.reinforcement import evaluate_reinforcement

        metrics, details, plots = evaluate_reinforcement(spec, Path(prepared_dir), model_dir, out_dir)
    value = metrics.get(spec.evaluation_metric)
    result = EvaluationResult(
        spec.evaluation_metric,
        None if value is None else float(value),
        metrics,
        details,
        [Path(p).name for p in plots],
    )
    (out_dir / RESULTS).write_text(json.dumps(result.to_dict(), indent=2, default=float))
    return result


def _evaluate_supervised(spec: TrainingSpec, prepared: PreparedData, model_dir: Path, out_dir: Path):
    model = load_model(model_dir)
    manifest = read_manifest(model_dir)
    X, y = prepared.features("test"), prepared.labels("test")
    if spec.task_type == "classification":
        return classification_report(model, X, y, manifest["classes"], out_dir)
    return regression_report(y, model.predict(X), out_dir)


def classification_report(model, X, y: np.ndarray, classes: list[str], out_dir: Path):
    from sklearn import metrics as skm

    pred = np.asarray(model.predict(X)).astype(np.int64)
    proba = model.predict_proba(X) if hasattr(model, "predict_proba") else None
    labels = list(range(len(classes)))
    binary = len(classes) == 2
    average = "binary" if binary else "macro"
    result = {
        "accuracy": skm.accuracy_score(y, pred),
        "precision": skm.precision_score(y, pred, average=average, labels=labels, zero_division=0),
        "recall": skm.recall_score(y, pred, average=average, labels=labels, zero_division=0),
        "f1_score": skm.f1_score(y, pred, average=average, labels=labels, zero_division=0),
    }
    present = np.unique(y)
    if proba is not None and len(present) == len(classes):
        result["auc_roc"] = (
            skm.roc_auc_score(y, proba[:, 1])
            if binary
            else skm.roc_auc_score(y, proba, multi_class="ovr", labels=labels)
        )
    matrix = skm.confusion_matrix(y, pred, labels=labels)
    details = {
        "confusion_matrix": matrix.tolist(),
        "classes": classes,
        "n_test": int(len(y)),
        "average": average,
        "per_class": {
            classes[i]: {
                "precision": float(p),
                "recall": float(r),
                "f1_score": float(f),
                "support": int(s),
            }
            for i, (p, r, f, s) in enumerate(
                zip(
                    *skm.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0), strict=True
                )
            )
        },
    }
    plots = [_plot_confusion(matrix, classes, out_dir)]
    if "auc_roc" in result:
        roc = _roc_curves(y, proba, classes)
        details["roc"] = roc
        plots.append(_plot_roc(roc, out_dir))
    return {k: round(float(v), 6) for k, v in result.items()}, details, plots


def regression_report(y: np.ndarray, pred: np.ndarray, out_dir: Path):
    from sklearn import metrics as skm

    nonzero = np.abs(y) > 1e-12
    result = {
        "r2": skm.r2_score(y, pred),
        "rmse": float(np.sqrt(skm.mean_squared_error(y, pred))),
        "mae": skm.mean_absolute_error(y, pred),
        # MAPE over rows with a non-zero target, as a fraction; undefined rows are skipped, not infinite.
        "mape": float(np.mean(np.abs((y[nonzero] - pred[nonzero]) / y[nonzero])))
        if nonzero.any()
        else float("nan"),
    }
    details = {"n_test": int(len(y)), "mape_rows": int(nonzero.sum())}
    return {k: round(float(v), 6) for k, v in result.items()}, details, [_plot_residuals(y, pred, out_dir)]


def _roc_curves(y, proba, classes) -> dict[str, dict[str, list[float]]]:
    from sklearn.metrics import roc_curve

    targets = [1] if len(classes) == 2 else range(len(classes))
    curves = {}
    for index in targets:
        fpr, tpr, thresholds = roc_curve(y == index, proba[:, index])
        curves[classes[index]] = {
            "fpr": np.round(fpr, 5).tolist(),
            "tpr": np.round(tpr, 5).tolist(),
            "thresholds": np.round(np.minimum(thresholds, 1.0), 5).tolist(),
        }
    return curves


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_confusion(matrix: np.ndarray, classes: list[str], out_dir: Path) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4 + 0.3 * len(classes), 4 + 0.3 * len(classes)))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", color="black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title("Confusion matrix (test split)")
    return _save(fig, out_dir / "confusion_matrix.png")


def _plot_roc(curves: dict, out_dir: Path) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, curve in curves.items():
        ax.plot(curve["fpr"], curve["tpr"], label=f"class {name}")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC (one-vs-rest)" if len(curves) > 1 else "ROC")
    ax.legend(loc="lower right", fontsize="small")
    return _save(fig, out_dir / "roc_curve.png")


def _plot_residuals(y: np.ndarray, pred: np.ndarray, out_dir: Path) -> str:
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 4))
    left.scatter(y, pred, s=10)
    low, high = float(min(y.min(), pred.min())), float(max(y.max(), pred.max()))
    left.plot([low, high], [low, high], linestyle="--", color="grey")
    left.set_xlabel("actual")
    left.set_ylabel("predicted")
    right.scatter(pred, y - pred, s=10)
    right.axhline(0, linestyle="--", color="grey")
    right.set_xlabel("predicted")
    right.set_ylabel("residual")
    fig.suptitle("Residuals (test split)")
    return _save(fig, out_dir / "residuals.png")


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    _pyplot().close(fig)
    return str(path)
