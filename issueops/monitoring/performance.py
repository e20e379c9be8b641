"""Performance of a served version on production traffic: delayed labels, the registered metric
measured on them, and a confidence-based estimate for classifiers when labels are missing.

Feedback files (CSV with a header, JSON lines, or a JSON array) hold one label per record, keyed by
`request_id` (the CloudEvent id of the logged inference) and optionally `row` (the row in a batch
request, default 0). Every record is stored, whatever its state, under
monitoring/<model>/feedback/<YYYY-MM-DD>/: records for request ids not (yet) in the payload logs and
records whose label does not fit the model are counted and reported, never dropped; the uploaded
file is stored beside them as it came.

Without labels, a classifier's accuracy is estimated as NannyML's CBPE does: the expected accuracy
is the mean probability of the predicted class, after calibrating the probabilities (isotonic
regression, one class against the rest) on the test split's probabilities and true labels from the
reference profile; without those, the raw probabilities are used and the report says so.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from issueops.errors import InvalidInput
from issueops.spec.catalog import METRICS
from issueops.store import ObjectStore

from .drift import MIN_ROWS, WindowTooSmall
from .inference_log import InferenceLog
from .payloads import MONITORING_PREFIX
from .profile import ReferenceProfile

MAX_FEEDBACK_BYTES = 64 * 1024 * 1024
MIN_LABELLED_ROWS = 50  # fewer labelled rows give a metric whose noise hides any degradation
MIN_CALIBRATION_ROWS = 30
FEEDBACK_SUFFIX = ".feedback.jsonl"
OK, UNKNOWN_REQUEST, WRONG_TYPE, MALFORMED = "ok", "unknown_request", "wrong_type", "malformed"
_EXAMPLES = 5


def feedback_prefix(model: str) -> str:
    return f"{MONITORING_PREFIX}/{model}/feedback"


@dataclass
class FeedbackResult:
    model: str
    key: str  # where the records were stored
    records: int
    accepted: int
    unknown_requests: int
    wrong_type: int
    malformed: int
    examples: dict[str, list[str]] = field(default_factory=dict)  # status -> first few, with why

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        parts = [f"{self.records} label(s) stored for {self.model}: {self.accepted} match a logged request"]
        if self.unknown_requests:
            ids = ", ".join(self.examples.get(UNKNOWN_REQUEST, []))
            parts.append(
                f"{self.unknown_requests} name a request id not in the payload logs (kept; they count once "
                f"the request is logged): {ids}"
            )
        if self.wrong_type:
            parts.append(
                f"{self.wrong_type} have a label of the wrong type (kept, not used): "
                + "; ".join(self.examples.get(WRONG_TYPE, []))
            )
        if self.malformed:
            parts.append(
                f"{self.malformed} lack a request_id or a label (kept, not used): "
                + "; ".join(self.examples.get(MALFORMED, []))
            )
        return ". ".join(parts) + "."


def parse_feedback(data: bytes, name: str = "") -> list[dict[str, Any]]:
    """The records of a feedback file: CSV with a header, JSON lines, or a JSON array of objects."""
    if len(data) > MAX_FEEDBACK_BYTES:
        raise InvalidInput(
            f"{name or 'The feedback file'} is {len(data) // (1024 * 1024)} MiB; send at most "
            f"{MAX_FEEDBACK_BYTES // (1024 * 1024)} MiB at a time."
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInput(f"{name or 'The feedback file'} is not UTF-8 text.") from None
    stripped = text.lstrip()
    if not stripped:
        raise InvalidInput(f"{name or 'The feedback file'} is empty.")
    if name.lower().endswith(".csv") or not stripped.startswith(("{", "[")):
        rows = list(csv.DictReader(io.StringIO(text)))
        if not rows or "request_id" not in rows[0]:
            raise InvalidInput(
                f"{name or 'The feedback file'} is read as CSV and needs a header with request_id and label."
            )
        return [{k: v for k, v in row.items() if k is not None} for row in rows]
    if stripped.startswith("["):
        try:
            records = json.loads(text)
        except ValueError as exc:
            raise InvalidInput(f"{name or 'The feedback file'} is not a JSON array: {exc}.") from None
        return [r if isinstance(r, dict) else {"_raw": r} for r in records]
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = {"_raw": line[:200], "_line": number}
        records.append(record if isinstance(record, dict) else {"_raw": record, "_line": number})
    return records


def _label_for(value: Any, task_type: str, classes: Sequence[str] | None) -> tuple[Any, str]:
    """(normalised label, "") or (None, why it does not fit the model)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, "no label"
    if task_type == "classification":
        text = value if isinstance(value, str) else _number_text(value)
        text = text.strip() if isinstance(text, str) else None
        if text is None:
            return None, f"label {value!r:.40} is not a class name"
        if classes is not None and text not in classes:
            return None, f"label {text[:40]!r} is not one of the classes {', '.join(list(classes)[:10])}"
        return text, ""
    if isinstance(value, bool):
        return None, f"label {value!r} is not a number"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None, f"label {str(value)[:40]!r} is not a number"
    if not np.isfinite(number):
        return None, f"label {value!r} is not a finite number"
    return number, ""


def _number_text(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return str(int(value)) if float(value).is_integer() else str(value)


def record_feedback(
    store: ObjectStore,
    model: str,
    data: bytes,
    *,
    name: str = "feedback",
    task_type: str,
    classes: Sequence[str] | None = None,
    known_request_ids: Collection[str] = (),
    now: datetime | None = None,
) -> FeedbackResult:
    """Store every record of a feedback file with its state; count what cannot be used yet or at all.

    `known_request_ids` are the ids in the model's payload logs (read_inference_log(...).keys);
    `task_type` and `classes` (the reference profile's) decide which labels fit.
    """
    records = parse_feedback(data, name)
    now = (now or datetime.now(UTC)).astimezone(UTC)
    known = set(known_request_ids)
    stored, counts = [], {OK: 0, UNKNOWN_REQUEST: 0, WRONG_TYPE: 0, MALFORMED: 0}
    examples: dict[str, list[str]] = {}
    for index, record in enumerate(records):
        request_id = str(record.get("request_id") or "").strip()
        row, label, why = _row(record.get("row")), None, ""
        if not request_id or "label" not in record:
            status, why = (
                MALFORMED,
                f"record {index + 1} has no {'request_id' if not request_id else 'label'}",
            )
        elif row is None:
            status, why = (
                MALFORMED,
                f"record {index + 1} has row {str(record.get('row'))[:20]!r}, not a row number",
            )
        else:
            label, problem = _label_for(record.get("label"), task_type, classes)
            if problem:
                status, why = WRONG_TYPE, f"{request_id[:40]}: {problem}"
            elif request_id not in known:
                status, why = UNKNOWN_REQUEST, request_id[:40]
            else:
                status = OK
        counts[status] += 1
        if status != OK and len(examples.setdefault(status, [])) < _EXAMPLES:
            examples[status].append(why)
        stored.append(
            {
                "request_id": request_id,
                "row": row,
                "label": label,
                "status": status,
                "reason": why if status != OK else "",
                "received_at": now.isoformat(timespec="seconds"),
                "source": name,
                "record": record,
            }
        )
    base = (
        f"{feedback_prefix(model)}/{now.date().isoformat()}/{now.strftime('%H%M%S')}-{uuid.uuid4().hex[:12]}"
    )
    extension = next((e for e in (".csv", ".jsonl", ".json") if name.lower().endswith(e)), ".txt")
    store.put_bytes(f"{base}.original{extension}", data)
    key = f"{base}{FEEDBACK_SUFFIX}"
    store.put_bytes(key, b"".join(json.dumps(r, default=str).encode() + b"\n" for r in stored))
    return FeedbackResult(
        model=model,
        key=key,
        records=len(records),
        accepted=counts[OK],
        unknown_requests=counts[UNKNOWN_REQUEST],
        wrong_type=counts[WRONG_TYPE],
        malformed=counts[MALFORMED],
        examples=examples,
    )


def _row(value: Any) -> int | None:
    if value is None or value == "":
        return 0
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() and number >= 0 else None


def read_feedback(store: ObjectStore, model: str) -> pd.DataFrame:
    """Usable labels of a model (request_id, row, label, received_at), the latest per request row.

    Records for ids that were unknown when they arrived are included: the join with the payload
    logs decides whether they count now.
    """
    rows = []
    for key in store.list(feedback_prefix(model)):
        if not key.endswith(FEEDBACK_SUFFIX):
            continue
        for line in store.get_bytes(key).splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("status") in (OK, UNKNOWN_REQUEST):
                rows.append((record["request_id"], record["row"], record["label"], record["received_at"]))
    frame = pd.DataFrame(rows, columns=["request_id", "row", "label", "received_at"])
    return frame.sort_values("received_at", kind="stable").drop_duplicates(["request_id", "row"], keep="last")


@dataclass
class PerformanceReport:
    model: str
    version: int | None
    metric: str
    value: float
    registered: float | None  # the metric the version was registered with (test split)
    estimated: bool  # true: CBPE estimate without labels
    method: str
    rows: int  # logged rows in the window
    labelled_rows: int
    higher_is_better: bool = True
    tolerance: float = 0.0
    delta: float | None = None  # value - registered
    degraded: bool | None = None  # worse than registered by more than the tolerance
    since: str | None = None
    until: str | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)

    def summary(self) -> str:
        what = "estimated" if self.estimated else "measured"
        against = (
            ""
            if self.registered is None
            else f" against {self.registered:.4g} at registration ({'degraded' if self.degraded else 'within tolerance'}"
            f", tolerance {self.tolerance:g})"
        )
        basis = (
            f"{self.labelled_rows} labelled rows" if not self.estimated else f"{self.rows} unlabelled rows"
        )
        return (
            f"{self.model} version {self.version}: {self.metric} {what} {self.value:.4g} on {basis}"
            f"{against}; {self.method}." + (f" {self.note}" if self.note else "")
        )


def metric_value(
    metric: str,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    proba: np.ndarray | None = None,
    n_classes: int | None = None,
) -> float:
    """The evaluation metric as the evaluate step computes it (binary average for two classes,
    macro otherwise)."""
    from sklearn import metrics as skm

    if metric in ("r2", "rmse", "mae", "mape"):
        y_true, y_pred = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
        if metric == "r2":
            return float(skm.r2_score(y_true, y_pred))
        if metric == "rmse":
            return float(np.sqrt(skm.mean_squared_error(y_true, y_pred)))
        if metric == "mae":
            return float(skm.mean_absolute_error(y_true, y_pred))
        nonzero = np.abs(y_true) > 1e-12
        return float(np.mean(np.abs((y_true[nonzero] - y_pred[nonzero]) / y_true[nonzero])))
    labels = list(range(n_classes or int(max(y_true.max(), y_pred.max()) + 1)))
    average = "binary" if len(labels) == 2 else "macro"
    if metric == "accuracy":
        return float(skm.accuracy_score(y_true, y_pred))
    if metric in ("precision", "recall", "f1_score"):
        score = {"precision": skm.precision_score, "recall": skm.recall_score, "f1_score": skm.f1_score}[
            metric
        ]
        return float(score(y_true, y_pred, average=average, labels=labels, zero_division=0))
    if metric == "auc_roc":
        if proba is None or len(np.unique(y_true)) != len(labels):
            raise InvalidInput("auc_roc needs the probabilities and labels of every class in the window.")
        if len(labels) == 2:
            return float(skm.roc_auc_score(y_true, proba[:, 1]))
        return float(skm.roc_auc_score(y_true, proba, multi_class="ovr", labels=labels))
    raise InvalidInput(f"The metric {metric!r} cannot be measured on production traffic.")


def _compare(report: PerformanceReport, registered: float | None, tolerance: float) -> PerformanceReport:
    report.registered, report.tolerance = registered, tolerance
    if registered is not None:
        report.delta = round(report.value - registered, 6)
        worse = registered - report.value if report.higher_is_better else report.value - registered
        report.degraded = bool(worse > tolerance)
    return report


def labelled_rows(log: InferenceLog, labels: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Positions in the log that have a label, and those labels."""
    if labels.empty or log.rows == 0:
        return np.array([], dtype=np.int64), np.array([], dtype=object)
    keys = log.keys[["request_id", "row"]].assign(_position=np.arange(log.rows))
    joined = keys.merge(labels[["request_id", "row", "label"]], on=["request_id", "row"], how="inner")
    return joined["_position"].to_numpy(dtype=np.int64), joined["label"].to_numpy(dtype=object)


def measure_performance(
    log: InferenceLog,
    labels: pd.DataFrame,
    *,
    task_type: str,
    metric: str,
    classes: Sequence[str] | None = None,
    registered: float | None = None,
    tolerance: float = 0.0,
    min_labelled: int = MIN_LABELLED_ROWS,
) -> PerformanceReport:
    """`metric` on the logged rows that have a label; WindowTooSmall below `min_labelled` of them."""
    positions, values = labelled_rows(log, labels)
    if len(positions) < min_labelled:
        raise WindowTooSmall(
            f"{len(positions)} logged row(s) of {log.model} in the window have a label; measuring {metric} "
            f"needs at least {min_labelled}: send more with `issueops monitor feedback` or widen --since."
        )
    proba = None
    if task_type == "classification":
        if not classes or "label" not in log.outputs:
            raise InvalidInput(
                f"The payload logs of {log.model} hold no predicted class to compare labels with."
            )
        index = {c: i for i, c in enumerate(classes)}
        keep = np.array([v in index for v in values])
        positions, values = positions[keep], values[keep]
        y_true = np.array([index[v] for v in values], dtype=np.int64)
        y_pred = np.asarray(log.outputs["label"]).reshape(-1)[positions].astype(np.int64)
        if "probabilities" in log.outputs:
            proba = np.asarray(log.outputs["probabilities"], dtype=np.float64)[positions]
    else:
        if "prediction" not in log.outputs:
            raise InvalidInput(f"The payload logs of {log.model} hold no prediction to compare labels with.")
        y_true = values.astype(np.float64)
        y_pred = np.asarray(log.outputs["prediction"], dtype=np.float64).reshape(log.rows, -1)[positions, 0]
    value = metric_value(metric, y_true, y_pred, proba, len(classes) if classes else None)
    report = PerformanceReport(
        model=log.model,
        version=log.version,
        metric=metric,
        value=round(value, 6),
        registered=None,
        estimated=False,
        method="measured on labelled production traffic",
        rows=log.rows,
        labelled_rows=len(positions),
        higher_is_better=METRICS[metric].higher_is_better if metric in METRICS else True,
        since=log.since.isoformat() if log.since else None,
        until=log.until.isoformat() if log.until else None,
    )
    return _compare(report, registered, tolerance)


def estimate_accuracy(
    proba: np.ndarray, predicted: np.ndarray | None = None, calibration: pd.DataFrame | None = None
) -> tuple[float, bool]:
    """CBPE's expected accuracy: the mean (calibrated) probability of the predicted class; and
    whether it was calibrated (needs probability_<i> and true_label of enough reference rows)."""
    from sklearn.isotonic import IsotonicRegression

    proba = np.asarray(proba, dtype=np.float64)
    predicted = np.argmax(proba, axis=1) if predicted is None else np.asarray(predicted, dtype=np.int64)
    columns = [f"probability_{i}" for i in range(proba.shape[1])]
    calibrated = False
    if (
        calibration is not None
        and len(calibration) >= MIN_CALIBRATION_ROWS
        and "true_label" in calibration
        and all(c in calibration for c in columns)
    ):
        truth = calibration["true_label"].to_numpy(dtype=np.int64)
        adjusted = np.empty_like(proba)
        for i, column in enumerate(columns):
            isotonic = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
            isotonic.fit(calibration[column].to_numpy(dtype=np.float64), (truth == i).astype(np.float64))
            adjusted[:, i] = isotonic.predict(proba[:, i])
        sums = adjusted.sum(axis=1, keepdims=True)
        usable = sums[:, 0] > 0
        proba = np.where(usable[:, None], adjusted / np.where(sums > 0, sums, 1.0), proba)
        calibrated = True
    return float(np.mean(proba[np.arange(len(proba)), predicted])), calibrated


def estimate_performance(
    log: InferenceLog,
    *,
    calibration: pd.DataFrame | None = None,
    registered: float | None = None,
    tolerance: float = 0.0,
    min_rows: int = MIN_ROWS,
) -> PerformanceReport:
    """A classifier's accuracy estimated from its logged probabilities (no labels), marked estimated."""
    if "probabilities" not in log.outputs:
        raise InvalidInput(
            f"The payload logs of {log.model} hold no class probabilities, so its performance cannot be "
            "estimated without labels; send labels with `issueops monitor feedback`."
        )
    if log.rows < min_rows:
        raise WindowTooSmall(
            f"The window holds {log.rows} logged row(s) of {log.model}; estimating its accuracy needs at "
            f"least {min_rows}: widen --since or wait for more traffic."
        )
    predicted = np.asarray(log.outputs["label"]).reshape(-1) if "label" in log.outputs else None
    value, calibrated = estimate_accuracy(log.outputs["probabilities"], predicted, calibration)
    method = (
        f"CBPE estimate, probabilities calibrated on {len(calibration)} test-split rows"
        if calibrated
        else "CBPE estimate from uncalibrated probabilities (the reference profile has no calibration rows)"
    )
    report = PerformanceReport(
        model=log.model,
        version=log.version,
        metric="accuracy",
        value=round(value, 6),
        registered=None,
        estimated=True,
        method=method,
        rows=log.rows,
        labelled_rows=0,
        since=log.since.isoformat() if log.since else None,
        until=log.until.isoformat() if log.until else None,
    )
    return _compare(report, registered, tolerance)


def check_performance(
    profile: ReferenceProfile,
    log: InferenceLog,
    labels: pd.DataFrame,
    *,
    registered_metrics: Mapping[str, float],
    tolerance: float = 0.0,
    min_labelled: int = MIN_LABELLED_ROWS,
    min_rows: int = MIN_ROWS,
) -> PerformanceReport:
    """The version's evaluation metric on labelled traffic against the value it was registered
    with; for a classifier with too few labels, the CBPE accuracy estimate instead (marked)."""
    metric = profile.evaluation_metric or ("accuracy" if profile.task_type == "classification" else "r2")
    positions, _ = labelled_rows(log, labels)
    if len(positions) >= min_labelled or profile.task_type != "classification":
        return measure_performance(
            log,
            labels,
            task_type=profile.task_type,
            metric=metric,
            classes=profile.classes,
            registered=registered_metrics.get(metric, profile.metric_value),
            tolerance=tolerance,
            min_labelled=min_labelled,
        )
    report = estimate_performance(
        log,
        calibration=profile.predictions,
        registered=registered_metrics.get("accuracy"),
        tolerance=tolerance,
        min_rows=min_rows,
    )
    labelled = f"{len(positions)} labelled row(s), fewer than the {min_labelled} a measurement needs"
    report.note = (
        f"{labelled}; the estimate is of accuracy, the version's metric is {metric}."
        if metric != "accuracy"
        else f"{labelled}."
    )
    return report


def known_request_ids(log: InferenceLog) -> set[str]:
    return set(log.keys["request_id"].astype(str))
