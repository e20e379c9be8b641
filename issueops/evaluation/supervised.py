"""evaluate: metrics on the held-out test split, results.json and plots in one directory; and a
registered version (production's, the champion) scored on the same data as a new attempt."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from issueops.data.prepare import PreparedData
from issueops.errors import InvalidInput, IssueOpsError
from issueops.evaluation.plots import pyplot, save
from issueops.registry.names import VersionInfo
from issueops.spec.body import TrainingSpec
from issueops.training.train import load_model, read_manifest

log = logging.getLogger(__name__)

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
        from issueops.evaluation.unsupervised import evaluate_unsupervised

        metrics, details, plots = evaluate_unsupervised(
            spec, PreparedData.open(prepared_dir), model_dir, out_dir
        )
    else:
        from issueops.evaluation.reinforcement import evaluate_reinforcement

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


@dataclass
class ChampionScore:
    """A registered version scored on the data a new attempt is judged on (its test split, or its
    evaluation episodes), or the reason it could not be: `value` is None then."""

    model: str
    version: int | None
    evaluation_metric: str
    value: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    registered_value: float | None = None  # what it was registered with, on its own test split
    scored_on: str = ""  # "the same 114-row test split", "the same 10 episodes of CartPole-v1, seeds ..."
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def score_model(spec: TrainingSpec, prepared_dir: Path, model_dir: Path) -> tuple[dict[str, float], str]:
    """The metrics of the model saved in `model_dir` on the data `spec`'s attempt is judged on, and
    what that data is; InvalidInput with the reason when that model cannot be scored there (another
    task, a changed feature set or classes, a model that only labels the rows it was fitted on)."""
    manifest = read_manifest(model_dir)
    kind = (manifest.get("learning_type"), manifest.get("task_type"))
    if kind != (spec.learning_type, spec.task_type):
        raise InvalidInput(
            f"it is a {kind[0]} {kind[1]} model and this attempt is {spec.learning_type} {spec.task_type}"
        )
    if spec.learning_type == "reinforcement":
        from issueops.evaluation.reinforcement import score_policy

        environment = (manifest.get("spec") or {}).get("environment")
        if environment != spec.environment:
            raise InvalidInput(f"it plays {environment}, not {spec.environment}")
        metrics, played = score_policy(spec, Path(model_dir) / manifest["file"])
        return metrics, (
            f"the same {played['episodes']} episodes of {spec.environment}, seeds {played['seeds']}"
        )
    prepared = PreparedData.open(prepared_dir)
    test = prepared.table("test")
    columns = list(manifest.get("feature_columns") or [])
    if problem := _feature_problem(columns, manifest.get("feature_kinds") or {}, prepared.metadata, test):
        raise InvalidInput(problem)
    scored_on = f"the same {len(test)}-row test split"
    if spec.learning_type == "supervised":
        return _score_supervised(manifest, prepared, model_dir, test[columns]), scored_on
    from issueops.evaluation.unsupervised import evaluate_unsupervised
    from issueops.training.unsupervised import NOT_SERVABLE

    if spec.algorithm in NOT_SERVABLE:
        raise InvalidInput(
            f"this attempt's {spec.algorithm} is scored on the rows it was fitted on, and another model "
            "cannot be scored on those as on a test split"
        )
    if manifest.get("servable") is False:
        raise InvalidInput(NOT_SERVABLE.get(manifest.get("algorithm"), "it cannot score new rows"))
    own = PreparedData(prepared.directory, {**prepared.metadata, "feature_columns": columns})
    with tempfile.TemporaryDirectory(prefix="issueops-score-") as scratch:  # its plots are not kept
        metrics, _, _ = evaluate_unsupervised(_spec_of(manifest), own, model_dir, Path(scratch))
    return metrics, scored_on


def _feature_problem(columns: list[str], kinds: dict[str, str], metadata: dict, table) -> str | None:
    """Why a model with these feature columns cannot read this data (None when it can)."""
    if not columns:
        return "it names no feature columns"
    missing = [c for c in columns if c not in table.columns]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        return f"the feature set changed: {shown} {'is' if len(missing) == 1 else 'are'} not in this attempt's data"
    now = metadata.get("feature_kinds") or {}
    changed = [c for c in columns if c in now and c in kinds and now[c] != kinds[c]]
    if changed:
        first = changed[0]
        return (
            f"the feature set changed: {len(changed)} column(s) changed kind ({first} was {kinds[first]}, "
            f"is {now[first]} now)"
        )
    return None


def _score_supervised(manifest: dict, prepared: PreparedData, model_dir: Path, X) -> dict:
    target = prepared.metadata.get("target")
    if manifest.get("target") not in (None, target):
        raise InvalidInput(f"it predicts {manifest['target']}, and this attempt predicts {target}")
    model, y = load_model(model_dir), prepared.labels("test")
    if manifest.get("task_type") == "classification":
        classes = list(prepared.metadata.get("classes") or [])
        if list(manifest.get("classes") or []) != classes:
            theirs = ", ".join(map(str, (manifest.get("classes") or [])[:10]))
            raise InvalidInput(
                f"its classes ({theirs}) differ from this attempt's ({', '.join(classes[:10])})"
            )
        return classification_report(model, X, y, classes, None)[0]
    return regression_report(y, np.asarray(model.predict(X), dtype=np.float64), None)[0]


def _spec_of(manifest: dict) -> TrainingSpec:
    """The spec a model was trained with, from its manifest (fields this version does not know dropped)."""
    known = {f.name for f in dataclasses.fields(TrainingSpec)}
    return TrainingSpec(**{k: v for k, v in (manifest.get("spec") or {}).items() if k in known})


def score_version(
    spec: TrainingSpec, prepared_dir: Path, registry, model: str, version: int
) -> ChampionScore:
    """A registered version scored on the data `spec`'s attempt is judged on. Any failure is the
    score's `reason`, never an exception: a version that cannot be scored leaves the threshold to decide."""
    metric = spec.evaluation_metric
    score = ChampionScore(model, version, metric)
    with tempfile.TemporaryDirectory(prefix="issueops-version-") as scratch:
        try:
            info = registry.version(model, version)
            score.registered_value = info.metrics.get(metric)
            metrics, score.scored_on = score_model(
                spec, prepared_dir, registry.download(model, version, Path(scratch))
            )
        except IssueOpsError as error:  # InvalidInput: why it does not fit; others: the registry
            score.reason = str(error)
            return score
        except Exception as error:  # an old pickle, a dtype the model never saw: said, not raised
            log.warning("version %s of %s could not be scored", version, model, exc_info=True)
            score.reason = f"scoring it failed ({type(error).__name__}: {str(error)[:200]})"
            return score
    score.metrics = metrics
    value = metrics.get(metric)
    if value is None or math.isnan(value):
        score.reason = f"its {metric} could not be computed on {score.scored_on}"
    else:
        score.value = float(value)
    return score


def score_champion(
    spec: TrainingSpec, prepared_dir: Path, registry, model: str, *, run_id: str | None = None
) -> ChampionScore | None:
    """Production's version of `model` (the champion) scored on the data `spec`'s attempt is judged
    on; None when nothing is in production or production is this run's own version."""
    try:
        info = registry.production(model)
    except IssueOpsError as error:
        return ChampionScore(
            model, None, spec.evaluation_metric, reason=f"the registry could not be read ({error})"
        )
    if info is None or (run_id is not None and info.run_id == run_id):
        return None
    return score_version(spec, prepared_dir, registry, model, info.version)


def _evaluate_supervised(spec: TrainingSpec, prepared: PreparedData, model_dir: Path, out_dir: Path):
    model = load_model(model_dir)
    manifest = read_manifest(model_dir)
    X, y = prepared.features("test"), prepared.labels("test")
    if spec.task_type == "classification":
        return classification_report(model, X, y, manifest["classes"], out_dir)
    return regression_report(y, model.predict(X), out_dir)


def classification_report(model, X, y: np.ndarray, classes: list[str], out_dir: Path | None):
    """Metrics, details and plots of a classifier on (X, y); no plots without `out_dir`."""
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
    plots = [_plot_confusion(matrix, classes, out_dir)] if out_dir is not None else []
    if "auc_roc" in result:
        roc = _roc_curves(y, proba, classes)
        details["roc"] = roc
        if out_dir is not None:
            plots.append(_plot_roc(roc, out_dir))
    return {k: round(float(v), 6) for k, v in result.items()}, details, plots


def regression_report(y: np.ndarray, pred: np.ndarray, out_dir: Path | None):
    """Metrics, details and the residual plot of a regressor's predictions; no plot without `out_dir`."""
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
    plots = [_plot_residuals(y, pred, out_dir)] if out_dir is not None else []
    return {k: round(float(v), 6) for k, v in result.items()}, details, plots


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


def _plot_confusion(matrix: np.ndarray, classes: list[str], out_dir: Path) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4 + 0.3 * len(classes), 4 + 0.3 * len(classes)))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", color="black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title("Confusion matrix (test split)")
    return save(fig, out_dir / "confusion_matrix.png")


def _plot_roc(curves: dict, out_dir: Path) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, curve in curves.items():
        ax.plot(curve["fpr"], curve["tpr"], label=f"class {name}")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC (one-vs-rest)" if len(curves) > 1 else "ROC")
    ax.legend(loc="lower right", fontsize="small")
    return save(fig, out_dir / "roc_curve.png")


def _plot_residuals(y: np.ndarray, pred: np.ndarray, out_dir: Path) -> str:
    plt = pyplot()
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
    return save(fig, out_dir / "residuals.png")


@dataclass
class VersionComparison:
    """Two registered versions of a model: what each was registered with (`versions[i].metrics`,
    each on its own test split) and both scored on the newer one's data where possible."""

    model: str
    evaluation_metric: str
    higher_is_better: bool
    data_of: int  # the version whose run's test split (or episodes) both are scored on
    versions: list[VersionInfo]  # older first
    scores: list[ChampionScore]  # the same order
    better: int | None  # the version that scores better on that data; None for a tie or no comparison
    summary: str


def compare_versions(registry, store, model: str, a: int, b: int) -> VersionComparison:
    """Versions `a` and `b` of `model` side by side: registered metrics, and both scored (as the judge
    scores production) on the test split of the newer one's run, with the newer one's metric."""
    from issueops.pipeline.runs import RunRecord
    from issueops.results import format_value
    from issueops.spec.catalog import METRICS
    from issueops.store import download_dir

    if a == b:
        raise InvalidInput(f"Name two different versions of {model}, not {a} twice.")
    versions = sorted((registry.version(model, a), registry.version(model, b)), key=lambda v: v.version)
    newer = versions[1]
    request = (RunRecord(store, newer.run_id).read("request.json") or {}) if newer.run_id else {}
    if not request.get("spec"):
        why = (
            f"version {newer.version}'s run left no spec in the store, so there is no test split to score on"
        )
        metric = next(iter(newer.metrics), "")
        scores = [ChampionScore(model, v.version, metric, reason=why) for v in versions]
        return VersionComparison(
            model, metric, True, newer.version, versions, scores, None, f"{why[0].upper()}{why[1:]}."
        )
    spec = _spec_of({"spec": request["spec"]})
    metric = spec.evaluation_metric
    with tempfile.TemporaryDirectory(prefix="issueops-compare-") as scratch:
        prepared = download_dir(store, f"processed/{newer.run_id}", Path(scratch) / "processed")
        if spec.learning_type != "reinforcement" and not (prepared / "test.parquet").exists():
            why = f"version {newer.version}'s test split (processed/{newer.run_id}) is no longer in the store"
            scores = [ChampionScore(model, v.version, metric, reason=why) for v in versions]
        else:
            scores = [score_version(spec, prepared, registry, model, v.version) for v in versions]
    higher = METRICS[metric].higher_is_better
    better, summary = None, ""
    if all(s.value is not None for s in scores):
        values = ", ".join(f"{format_value(s.value)} for v{s.version}" for s in scores)
        summary = (
            f"On version {newer.version}'s {scores[1].scored_on.removeprefix('the same ')}: {metric} {values}"
        )
        gap = scores[1].value - scores[0].value
        if abs(gap) < 1e-9:
            summary += "; they score the same."
        else:
            better = scores[1].version if (gap > 0) == higher else scores[0].version
            summary += f"; v{better} is better by {format_value(abs(gap))}."
    else:
        summary = " ".join(
            f"Version {s.version} could not be scored on version {newer.version}'s data: {s.reason}."
            for s in scores
            if s.value is None
        )
    return VersionComparison(model, metric, higher, newer.version, versions, scores, better, summary)
