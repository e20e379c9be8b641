"""ONNX export of a trained model, with its preprocessing, checked against the model before use.

Every exported graph speaks the same tensors, so Triton, KServe and the local endpoint need no
per-algorithm knowledge:

  inputs   input        FP32  [batch, n_numeric]      numeric features, NaN = missing
           categorical  BYTES [batch, n_categorical]  text features, "" = missing
  outputs  label        INT64 [batch]                 class index into `classes`, or the cluster
           probabilities FP32 [batch, n_classes]      classification
           prediction   FP32 [batch, 1]               regression
           distances    FP64 [batch, n_clusters]      k-means: distance to every centre
           embedding    [batch, n_components]         PCA (FP64), the autoencoder's latent (FP32)

Column order is the training order, recorded in the export's `feature_columns`. Parity is checked
on the test split before anything is written: probabilities and outputs within 1e-4 (relative
above 1), labels (classes, clusters) identical.
"""

from __future__ import annotations

import copy
import io
import json
import warnings
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from issueops.errors import Conflict, InvalidInput, IssueOpsError, Unavailable
from issueops.training.train import read_manifest

TOLERANCE = 1e-4
OPSET = {"": 17, "ai.onnx.ml": 3}
IR_VERSION = 8
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

NUMERIC_INPUT = "input"
CATEGORICAL_INPUT = "categorical"
V2_DATATYPES = {1: "FP32", 11: "FP64", 7: "INT64", 6: "INT32", 8: "BYTES", 9: "BOOL"}


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


def export_model(model_dir: Path, test_frame: pd.DataFrame | None, out_path: Path) -> ExportResult:
    """Export model_dir to ONNX at out_path after checking parity on test_frame (RL policies:
    on observations sampled from the environment, against the RLlib checkpoint).

    Raises NotServable for algorithms that cannot predict on new data, ParityError when the
    graph disagrees with the model; in both cases out_path is not written.
    """
    manifest = read_manifest(model_dir)
    algorithm = manifest.get("algorithm", "?")
    if not manifest.get("servable", True):
        reason = manifest.get("servable_reason") or "it only describes the data it was fitted on"
        raise NotServable(
            f"{algorithm} cannot predict on new data ({reason.rstrip('.')}), so it is not servable: "
            "nothing is exported or deployed."
        )
    if manifest.get("format") == "onnx-policy":
        model, parity = policy_graph(Path(model_dir), manifest)
        columns: dict[str, list[str]] = {}
    elif manifest.get("format") == "sklearn-pipeline":
        from issueops.training.train import load_model

        if test_frame is None:
            raise InvalidInput(f"Parity of {algorithm} is checked on its test split, and none was given.")
        pipeline = load_model(model_dir)
        model, columns = to_onnx(pipeline, manifest)
        parity = check_parity(pipeline, model, test_frame, columns, manifest["task_type"])
    else:
        raise Unavailable(
            f"ONNX export for {algorithm} ({manifest.get('format', 'unknown format')}) is not available."
        )
    if not parity.passed:
        diffs = ", ".join(f"{k} {v:.2e}" for k, v in parity.max_abs_diff.items())
        labels = {None: "", True: ", labels identical", False: ", labels differ"}[parity.labels_identical]
        raise ParityError(
            f"The ONNX export of {algorithm} disagrees with the trained model on the test split "
            f"({parity.rows} rows): max difference {diffs} (tolerance {TOLERANCE:g}){labels}. "
            "Nothing was published."
        )
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".part")
    tmp.write_bytes(model.SerializeToString())
    tmp.replace(out_path)
    inputs, outputs = graph_signature(model)
    return ExportResult(
        onnx_path=out_path,
        algorithm=algorithm,
        task_type=manifest.get("task_type", "control"),
        inputs=inputs,
        outputs=outputs,
        feature_columns=columns,
        classes=manifest.get("classes"),
        parity=parity,
        standard_ops_only=all(node.domain in ("", "ai.onnx") for node in model.graph.node),
        run_id=manifest.get("run_id", ""),
    )


def to_onnx(pipeline, manifest: dict[str, Any]):
    """(ModelProto, feature columns per input) for a fitted Pipeline(preprocess, model).

    The graph computes what the model computes: numeric preprocessing in double, then float32
    into the trees, as scikit-learn and XGBoost do (a float32 preprocessing moves values across
    split thresholds). The MLP is float32 throughout and, without text features, uses only
    standard operators so TensorRT can build an engine from it.
    """
    import onnx

    preprocess = pipeline.named_steps["preprocess"]
    estimator = pipeline.named_steps["model"]
    numeric, categorical = _feature_groups(preprocess)
    mode = _MODES.get(manifest["task_type"], "regress")
    torch_model = hasattr(estimator, "module_") or hasattr(estimator, "to_torch")
    if torch_model and not categorical:
        model = _torch_graph(estimator, preprocess, len(numeric), mode)
    else:
        # k-means and PCA stay in double end to end: their outputs are distances, not thresholds.
        features = _preprocess_graph(
            preprocess,
            numeric,
            categorical,
            double=not torch_model,
            double_features=mode in ("cluster", "embed") and not torch_model,
        )
        n_features = features.graph.output[0].type.tensor_type.shape.dim[1].dim_value
        head = (
            _torch_graph(estimator, None, n_features, mode)
            if torch_model
            else _estimator_graph(estimator, n_features, mode)
        )
        model = onnx.compose.merge_models(features, head, io_map=[("features", "features")])
    model = onnx.helper.make_model(model.graph, opset_imports=_opsets(model), ir_version=IR_VERSION)
    model.producer_name = "issueops"
    columns = {k: v for k, v in {NUMERIC_INPUT: numeric, CATEGORICAL_INPUT: categorical}.items() if v}
    model.doc_string = json.dumps(
        {
            "algorithm": manifest.get("algorithm"),
            "run_id": manifest.get("run_id"),
            "feature_columns": columns,
            "classes": manifest.get("classes"),
        }
    )
    onnx.checker.check_model(model)
    return model, columns


POLICY_SAMPLES = 256


def policy_graph(model_dir: Path, manifest: dict[str, Any]):
    """The RL trainer's exported greedy policy, checked against the RLlib checkpoint it came from
    on observations sampled from the environment: actions identical (within 1e-4 when continuous),
    scores within 1e-4."""
    import gymnasium as gym
    import onnx
    import onnxruntime as ort
    import torch

    from issueops.training.reinforcement.ray import greedy_policy_module

    model = onnx.load(str(model_dir / manifest["file"]))
    onnx.checker.check_model(model)
    env = gym.make(manifest["environment"])
    env.observation_space.seed(0)
    observations = np.stack([env.observation_space.sample() for _ in range(POLICY_SAMPLES)]).astype(
        np.float32
    )
    info = {"action_kind": manifest["action_kind"]}
    if hasattr(env.action_space, "low"):
        info.update(action_low=env.action_space.low.tolist(), action_high=env.action_space.high.tolist())
    env.close()
    try:
        from ray.rllib.core.rl_module.rl_module import RLModule

        module = RLModule.from_checkpoint(str((model_dir / manifest["rl_module"]).resolve()))
    except ImportError:
        raise Unavailable("Checking an RL policy against its checkpoint needs ray[rllib].") from None
    except Exception as exc:  # noqa: BLE001 - RLlib raises many kinds; the checkpoint is unusable
        raise ParityError(
            f"The RLlib checkpoint of {manifest.get('algorithm')} cannot be loaded: {exc}"
        ) from None
    policy = greedy_policy_module(module, info, dqn=manifest.get("rllib_algorithm") == "DQN")
    with torch.no_grad():
        expected = [t.numpy() for t in policy(torch.from_numpy(observations))]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    action, scores = session.run(["action", "scores"], {session.get_inputs()[0].name: observations})
    discrete = manifest["action_kind"] == "discrete"
    return model, ParityReport(
        rows=POLICY_SAMPLES,
        max_abs_diff={"scores": _max_diff(scores, expected[1].astype(np.float64))}
        | ({} if discrete else {"action": _max_diff(action, expected[0].astype(np.float64))}),
        labels_identical=bool(np.array_equal(action, expected[0])) if discrete else None,
    )


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


def _feature_groups(preprocess) -> tuple[list[str], list[str]]:
    numeric, categorical = [], []
    for name, transformer, cols in preprocess.transformers_:
        if transformer == "drop" or not len(cols):
            continue
        (categorical if name == "categorical" else numeric).extend(list(cols))
    return numeric, categorical


def _opsets(model) -> list:
    from onnx import helper

    versions = {o.domain or "": o.version for o in model.opset_import}
    versions.update({d: v for d, v in OPSET.items() if d in versions or d == ""})
    return [helper.make_opsetid(d, v) for d, v in versions.items()]


def _preprocess_graph(
    preprocess, numeric: list[str], categorical: list[str], *, double: bool, double_features: bool = False
):
    """Graph from the raw input tensors to the feature matrix `features` (float32, or double).

    Numeric: median imputation and standard scaling as plain operators (ONNX Runtime's Imputer
    has no double kernel). Text: skl2onnx's imputer and one-hot encoder, "" marking missing.
    """
    from onnx import TensorProto, helper, numpy_helper

    nodes, initializers, inputs, parts = [], [], [], []
    feature_type = TensorProto.DOUBLE if double_features else TensorProto.FLOAT
    if numeric:
        pipe = preprocess.named_transformers_["numeric"]
        imputer, scaler = pipe.named_steps["impute"], pipe.named_steps["scale"]
        dtype = np.float64 if double else np.float32
        median = np.asarray(imputer.statistics_, dtype=dtype)
        if np.isnan(median).any():
            raise ParityError("A numeric feature had no values in the training split; it cannot be exported.")
        mean = scaler.mean_ if scaler.with_mean else np.zeros(len(numeric))
        scale = scaler.scale_ if scaler.with_std else np.ones(len(numeric))
        initializers += [
            numpy_helper.from_array(median, "numeric_median"),
            numpy_helper.from_array(np.asarray(mean, dtype=dtype), "numeric_mean"),
            numpy_helper.from_array(np.asarray(scale, dtype=dtype), "numeric_scale"),
        ]
        nodes += [
            helper.make_node("IsNaN", [NUMERIC_INPUT], ["numeric_missing"]),
            helper.make_node(
                "Where", ["numeric_missing", "numeric_median", NUMERIC_INPUT], ["numeric_imputed"]
            ),
            helper.make_node("Sub", ["numeric_imputed", "numeric_mean"], ["numeric_centred"]),
            helper.make_node("Div", ["numeric_centred", "numeric_scale"], ["numeric_scaled"]),
            helper.make_node("Cast", ["numeric_scaled"], ["numeric_features"], to=feature_type),
        ]
        elem = TensorProto.DOUBLE if double else TensorProto.FLOAT
        inputs.append(helper.make_tensor_value_info(NUMERIC_INPUT, elem, [None, len(numeric)]))
        parts.append("numeric_features")
    model = None
    if categorical:
        import onnx
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import StringTensorType

        pipe = copy.deepcopy(preprocess.named_transformers_["categorical"])
        pipe.named_steps["impute"].missing_values = ""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            text = convert_sklearn(
                pipe,
                initial_types=[(CATEGORICAL_INPUT, StringTensorType([None, len(categorical)]))],
                target_opset=OPSET,
            )
        text = onnx.compose.add_prefix(text, "categorical_", rename_inputs=False)
        nodes += list(text.graph.node)
        initializers += list(text.graph.initializer)
        inputs += list(text.graph.input)
        nodes.append(
            helper.make_node("Cast", [text.graph.output[0].name], ["categorical_features"], to=feature_type)
        )
        parts.append("categorical_features")
        model = text
    n_features = _n_features(preprocess)
    nodes.append(helper.make_node("Concat", parts, ["features"], axis=1))
    graph = helper.make_graph(
        nodes,
        "preprocess",
        inputs,
        [helper.make_tensor_value_info("features", feature_type, [None, n_features])],
        initializers,
    )
    opsets = _opsets(model) if model is not None else [helper.make_opsetid("", OPSET[""])]
    return helper.make_model(graph, opset_imports=opsets, ir_version=IR_VERSION)


def _n_features(preprocess) -> int:
    return len(preprocess.get_feature_names_out())


def _estimator_graph(estimator, n_features: int, mode: str):
    """skl2onnx conversion of the estimator alone, on the `features` matrix (float32 for
    predictors, double for k-means and PCA)."""
    from onnx import helper
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType

    _register_xgboost()
    options = {id(estimator): {"zipmap": False}} if mode == "classify" else None
    features = (FloatTensorType if mode in ("classify", "regress") else DoubleTensorType)([None, n_features])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = convert_sklearn(
            estimator, initial_types=[("features", features)], options=options, target_opset=OPSET
        )
    if mode == "classify":
        _tie_aware_label(model, np.asarray(estimator.classes_, dtype=np.int64))
    elif mode == "regress":
        _rename(model.graph, "variable", "prediction")
    elif mode == "cluster":
        _rename(model.graph, "scores", "distances")
    else:
        _rename(model.graph, "variable", "embedding")
    return helper.make_model(model.graph, opset_imports=_opsets(model), ir_version=IR_VERSION)


@cache
def _register_xgboost() -> None:
    """Teach skl2onnx the XGBoost estimators through onnxmltools' converter."""
    try:
        from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost
        from xgboost import XGBClassifier, XGBRegressor
    except ImportError:
        return
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )

    update_registered_converter(
        XGBClassifier,
        "XGBoostXGBClassifier",
        calculate_linear_classifier_output_shapes,
        convert_xgboost,
        options={"nocl": [True, False], "zipmap": [True, False, "columns"]},
    )
    update_registered_converter(
        XGBRegressor, "XGBoostXGBRegressor", calculate_linear_regressor_output_shapes, convert_xgboost
    )


def _torch_graph(estimator, preprocess, n_inputs: int, mode: str):
    """torch.onnx export of the MLP or autoencoder, with the numeric preprocessing as tensor ops
    when given. With preprocessing the graph reads `input` (FP32); without, the `features` matrix.
    """
    import onnx
    import torch

    head = _torch_head_class()(estimator, preprocess, mode)
    input_name = NUMERIC_INPUT if preprocess is not None else "features"
    outputs = _OUTPUTS[mode]
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            head,
            (torch.zeros(2, n_inputs),),
            buffer,
            dynamo=False,  # the TorchScript exporter needs no onnxscript and gives a plain graph
            input_names=[input_name],
            output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in [input_name, *outputs]},
            opset_version=OPSET[""],
        )
    model = onnx.load_from_string(buffer.getvalue())
    return onnx.helper.make_model(model.graph, opset_imports=_opsets(model), ir_version=IR_VERSION)


def _rename(graph, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
    for value in graph.output:
        if value.name == old:
            value.name = new


def _tie_aware_label(model, classes: np.ndarray) -> None:
    """Replace the converter's label by classes[argmax(round(probabilities))]; see TIE_DECIMALS."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    _rename(graph, "label", "converter_label")
    graph.output.remove(next(o for o in graph.output if o.name == "converter_label"))
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(10.0**TIE_DECIMALS, dtype=np.float32), "tie_scale"),
            numpy_helper.from_array(classes, "class_index"),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("Mul", ["probabilities", "tie_scale"], ["scaled_probabilities"]),
            helper.make_node("Round", ["scaled_probabilities"], ["rounded_probabilities"]),
            helper.make_node("ArgMax", ["rounded_probabilities"], ["label_position"], axis=1, keepdims=0),
            helper.make_node("Gather", ["class_index", "label_position"], ["label"], axis=0),
        ]
    )
    graph.output.insert(0, helper.make_tensor_value_info("label", TensorProto.INT64, [None]))


@cache
def _torch_head_class():
    import torch
    from torch import nn

    class TorchServingHead(nn.Module):
        """Imputation and scaling (optional), the network, then label and probabilities."""

        def __init__(self, estimator, preprocess, mode: str):
            super().__init__()
            # The autoencoder maps features to (cluster, latent) itself; the MLP gets a head here.
            net = estimator.to_torch() if mode == "cluster" else estimator.module_
            self.net = copy.deepcopy(net).eval()
            self.mode = mode
            self.preprocess = preprocess is not None
            if self.preprocess:
                numeric = preprocess.named_transformers_["numeric"]
                imputer, scaler = numeric.named_steps["impute"], numeric.named_steps["scale"]
                if np.isnan(imputer.statistics_).any():
                    raise ParityError(
                        "A numeric feature had no values in the training split; it cannot be exported."
                    )
                n = len(imputer.statistics_)
                mean = scaler.mean_ if scaler.with_mean else np.zeros(n)
                scale = scaler.scale_ if scaler.with_std else np.ones(n)
                self.register_buffer("median", torch.tensor(imputer.statistics_, dtype=torch.float32))
                self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
                self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32))
            if mode == "classify":
                classes = np.asarray(estimator.classes_, dtype=np.int64)
                self.register_buffer("classes", torch.tensor(classes))
            elif mode == "regress":
                self.y_mean, self.y_std = float(estimator.y_mean_), float(estimator.y_std_)

        def forward(self, x):
            if self.preprocess:
                x = torch.where(torch.isnan(x), self.median, x)
                x = (x - self.mean) / self.scale
            out = self.net(x)
            if self.mode == "cluster":
                return out
            if self.mode == "regress":
                return out * self.y_std + self.y_mean
            probabilities = torch.softmax(out, dim=1)
            position = torch.argmax(torch.round(probabilities * 10.0**TIE_DECIMALS), dim=1)
            return self.classes[position], probabilities

    return TorchServingHead
