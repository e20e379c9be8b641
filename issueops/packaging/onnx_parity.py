"""The contract every exported ONNX graph keeps: its tensors (TensorSpec, V2 datatypes), the parity check
against the model it was exported from, and the opsets; shared by onnx.py (scikit-learn, XGBoost) and
onnx_torch.py (torch MLPs, autoencoders and RL policies).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from issueops.errors import Conflict, IssueOpsError

TOLERANCE = 1e-4
OPSET = {"": 17, "ai.onnx.ml": 3}
IR_VERSION = 8

NUMERIC_INPUT = "input"
CATEGORICAL_INPUT = "categorical"
V2_DATATYPES = {1: "FP32", 11: "FP64", 7: "INT64", 6: "INT32", 8: "BYTES", 9: "BOOL"}


# Probabilities are rounded to this many decimals before the arg-max that gives the label, so an
# exact tie in the trained model (0.5 / 0.5 from a forest) is broken the same way (first class)
# instead of by float32 rounding noise.
TIE_DECIMALS = 5


# What each task's graph answers, and under which output names.
_MODES = {
    "classification": "classify",
    "regression": "regress",
    "clustering": "cluster",
    "dimensionality_reduction": "embed",
}


_OUTPUTS = {
    "classify": ["label", "probabilities"],
    "regress": ["prediction"],
    "cluster": ["label", "embedding"],
}


class ParityError(IssueOpsError):
    """The exported graph disagrees with the trained model; nothing was published."""


class NotServable(Conflict):
    """The algorithm cannot predict on new data, so there is nothing to serve."""


@dataclass
class TensorSpec:
    name: str
    datatype: str  # V2 / KServe datatype: FP32, INT64, BYTES, ...
    shape: list[int]  # -1 for a variable dimension (the batch)


@dataclass
class ParityReport:
    rows: int
    max_abs_diff: dict[str, float]
    labels_identical: bool | None
    tolerance: float = TOLERANCE

    @property
    def passed(self) -> bool:
        return self.labels_identical is not False and all(
            d <= self.tolerance for d in self.max_abs_diff.values()
        )


@dataclass
class ExportResult:
    onnx_path: Path
    algorithm: str
    task_type: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    feature_columns: dict[str, list[str]]
    classes: list[str] | None
    parity: ParityReport
    standard_ops_only: bool  # no ai.onnx.ml operators: TensorRT can parse it
    run_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["onnx_path"] = str(self.onnx_path)
        data["parity"]["passed"] = self.parity.passed
        return data


def graph_signature(model) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Input and output tensors as the graph declares them (names, V2 datatypes, shapes)."""

    def spec(value) -> TensorSpec:
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        return TensorSpec(value.name, V2_DATATYPES.get(tensor.elem_type, str(tensor.elem_type)), dims)

    initializers = {i.name for i in model.graph.initializer}
    inputs = [spec(v) for v in model.graph.input if v.name not in initializers]
    return inputs, [spec(v) for v in model.graph.output]


def onnx_feeds(
    frame: pd.DataFrame, columns: dict[str, list[str]], numeric_dtype=np.float64
) -> dict[str, np.ndarray]:
    """The input tensors for a table with the training columns (missing text becomes "")."""
    feeds = {}
    if columns.get(NUMERIC_INPUT):
        feeds[NUMERIC_INPUT] = frame[columns[NUMERIC_INPUT]].to_numpy(dtype=numeric_dtype, na_value=np.nan)
    if columns.get(CATEGORICAL_INPUT):
        text = frame[columns[CATEGORICAL_INPUT]]
        feeds[CATEGORICAL_INPUT] = (
            text.astype(object).where(text.notna(), "").astype(str).to_numpy(dtype=object)
        )
    return feeds


def check_parity(
    pipeline, model, frame: pd.DataFrame, columns: dict[str, list[str]], task_type: str
) -> ParityReport:
    """Run the graph with ONNX Runtime and the model itself on the same rows and compare."""
    import onnxruntime as ort

    frame = frame[[c for group in columns.values() for c in group]].copy()
    for column in columns.get(CATEGORICAL_INPUT, []):
        # Missing text is NaN for the model (as when it was fitted); parquet gives None.
        frame[column] = frame[column].astype(object).where(frame[column].notna(), np.nan)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    numeric_dtype = (
        np.float64 if any(i.type == "tensor(double)" for i in session.get_inputs()) else np.float32
    )
    outputs = session.run(None, onnx_feeds(frame, columns, numeric_dtype))
    got = dict(zip([o.name for o in session.get_outputs()], outputs, strict=True))
    mode = _MODES.get(task_type, "regress")
    if mode == "classify":
        expected_proba = np.asarray(pipeline.predict_proba(frame), dtype=np.float64)
        expected_label = np.asarray(pipeline.predict(frame)).astype(np.int64)
        return ParityReport(
            rows=len(frame),
            max_abs_diff={"probabilities": _max_diff(got["probabilities"], expected_proba)},
            labels_identical=bool(np.array_equal(got["label"].astype(np.int64), expected_label)),
        )
    if mode == "regress":
        expected = np.asarray(pipeline.predict(frame), dtype=np.float64).reshape(-1, 1)
        return ParityReport(
            rows=len(frame),
            max_abs_diff={"prediction": _scaled_diff(got["prediction"], expected)},
            labels_identical=None,
        )
    values = next(name for name in ("distances", "embedding") if name in got)
    expected = np.asarray(pipeline.transform(frame), dtype=np.float64)
    labels = None
    if mode == "cluster":
        labels = bool(
            np.array_equal(
                got["label"].astype(np.int64), np.asarray(pipeline.predict(frame)).astype(np.int64)
            )
        )
    return ParityReport(
        rows=len(frame), max_abs_diff={values: _scaled_diff(got[values], expected)}, labels_identical=labels
    )


def _scaled_diff(got: np.ndarray, expected: np.ndarray) -> float:
    """Largest difference, relative where the value is above 1 in magnitude."""
    got = np.asarray(got, dtype=np.float64)
    if got.shape != expected.shape:
        return float("inf")
    return float((np.abs(got - expected) / np.maximum(1.0, np.abs(expected))).max(initial=0.0))


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float(np.abs(a.astype(np.float64) - b).max(initial=0.0))


def _opsets(model) -> list:
    from onnx import helper

    versions = {o.domain or "": o.version for o in model.opset_import}
    versions.update({d: v for d, v in OPSET.items() if d in versions or d == ""})
    return [helper.make_opsetid(d, v) for d, v in versions.items()]


def _rename(graph, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
    for value in graph.output:
        if value.name == old:
            value.name = new
