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
above 1), labels (classes, clusters) identical."""

from __future__ import annotations

import copy
import json
import warnings
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from issueops.errors import InvalidInput, Unavailable
from issueops.packaging.onnx_parity import (
    _MODES,
    CATEGORICAL_INPUT,
    IR_VERSION,
    NUMERIC_INPUT,
    OPSET,
    TIE_DECIMALS,
    TOLERANCE,
    ExportResult,
    NotServable,
    ParityError,
    _opsets,
    _rename,
    check_parity,
    graph_signature,
)
from issueops.packaging.onnx_torch import _torch_graph, policy_graph
from issueops.training.train import read_manifest


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


def _feature_groups(preprocess) -> tuple[list[str], list[str]]:
    numeric, categorical = [], []
    for name, transformer, cols in preprocess.transformers_:
        if transformer == "drop" or not len(cols):
            continue
        (categorical if name == "categorical" else numeric).extend(list(cols))
    return numeric, categorical


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
