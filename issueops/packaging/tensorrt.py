"""TensorRT engines for GPU nodes: an FP16 plan (FP32 when FP16 fails or drifts) from a packaged
version's ONNX graph, checked against ONNX Runtime, published as Triton's `model.plan`.

The `tensorrt` wheels are not installable from PyPI here (the registry holds installer stubs that
fetch from NVIDIA's index), so this runs in NVIDIA's TensorRT image on a GPU node (the
`build_tensorrt_engine` component). Where `tensorrt` is missing every entry point says so with
issueops.errors.Unavailable; everything that needs no TensorRT (profiles, the graph check, the
plan's Triton config and package record) is plain Python.

Only graphs of standard ONNX operators can become engines: the neural network without text
features. Tree ensembles and one-hot encoders are ai.onnx.ml operators TensorRT has no layers for;
on a GPU node those run through ONNX Runtime's TensorRT accelerator instead (see triton.py).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from issueops.errors import InvalidInput, IssueOpsError, Unavailable
from issueops.packaging import triton
from issueops.packaging.onnx_parity import TensorSpec, graph_signature
from issueops.store import ObjectStore

FP16_TOLERANCE = 1e-2  # probabilities from an FP16 engine against ONNX Runtime in FP32
FP32_TOLERANCE = 1e-4
WORKSPACE_BYTES = 1 << 30
TENSORRT_IMAGE_HINT = "nvcr.io/nvidia/tensorrt:25.01-py3 (TensorRT 10.8, the one Triton 25.01 loads)"


class EngineCheckError(IssueOpsError):
    """The TensorRT engine's outputs disagree with ONNX Runtime's; no plan was published."""


@dataclass
class BatchProfile:
    """A TensorRT optimization profile over the batch dimension: (min, opt, max) per input."""

    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]

    def to_dict(self) -> dict[str, Any]:
        return {
            name: {"min": list(a), "opt": list(b), "max": list(c)} for name, (a, b, c) in self.shapes.items()
        }


@dataclass
class EngineResult:
    plan_path: Path
    precision: str  # fp16 | fp32
    gpu_product: str  # as NVIDIA's GPU feature discovery labels it (nvidia.com/gpu.product)
    compute_capability: str
    tensorrt_version: str
    max_abs_diff: dict[str, float]
    labels_agree: float | None
    profile: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["plan_path"] = str(self.plan_path)
        return data


def tensorrt_module():
    """The tensorrt module, or Unavailable saying where an engine can be built."""
    try:
        import tensorrt
    except ImportError:
        raise Unavailable(
            "TensorRT is not installed on this machine (PyPI only has installer stubs that download from "
            f"NVIDIA's index), so no engine can be built here; build it on a GPU node in {TENSORRT_IMAGE_HINT} "
            "with the build_tensorrt_engine component. Triton on GPU serves the ONNX model with ONNX "
            "Runtime's TensorRT accelerator meanwhile."
        ) from None
    return tensorrt


def batch_profile(
    inputs: list[TensorSpec], max_batch_size: int, opt_batch: int | None = None
) -> BatchProfile:
    """Dynamic-batch profile: batch 1 to max_batch_size, tuned for opt_batch (default: a quarter)."""
    if max_batch_size < 1:
        raise InvalidInput("max_batch_size must be at least 1.")
    opt = opt_batch or max(1, max_batch_size // 4)
    if not 1 <= opt <= max_batch_size:
        raise InvalidInput(f"opt_batch must lie between 1 and {max_batch_size}.")
    shapes = {}
    for spec in inputs:
        if spec.datatype == "BYTES":
            raise Unavailable(f"Input '{spec.name}' holds text; TensorRT has no string tensors.")
        if not spec.shape or spec.shape[0] != -1 or any(d < 1 for d in spec.shape[1:]):
            raise InvalidInput(f"Input '{spec.name}' {spec.shape} is not [batch, fixed dims...].")
        rest = tuple(spec.shape[1:])
        shapes[spec.name] = ((1, *rest), (opt, *rest), (max_batch_size, *rest))
    return BatchProfile(shapes)


def engine_blockers(onnx_model) -> list[str]:
    """Why this graph cannot become a TensorRT engine (empty when it can)."""
    problems = []
    foreign = sorted(
        {f"{n.domain}.{n.op_type}" for n in onnx_model.graph.node if n.domain not in ("", "ai.onnx")}
    )
    if foreign:
        problems.append(f"it uses operators TensorRT has no layers for: {', '.join(foreign)}")
    inputs, _ = graph_signature(onnx_model)
    text = [t.name for t in inputs if t.datatype == "BYTES"]
    if text:
        problems.append(f"input(s) {', '.join(text)} hold text")
    return problems


def build_engine(
    onnx_path: Path,
    plan_path: Path,
    *,
    max_batch_size: int = triton.DEFAULT_MAX_BATCH_SIZE,
    fp16: bool = True,
    samples: dict[str, np.ndarray] | None = None,
) -> EngineResult:
    """Build, check against ONNX Runtime and write a plan; FP32 when FP16 fails or drifts."""
    import onnx

    model = onnx.load(str(onnx_path))
    blockers = engine_blockers(model)
    if blockers:
        raise Unavailable(
            f"{Path(onnx_path).name} cannot become a TensorRT engine: {'; '.join(blockers)}. "
            "On GPU nodes it runs with ONNX Runtime's TensorRT accelerator instead."
        )
    trt = tensorrt_module()
    inputs, _ = graph_signature(model)
    profile = batch_profile(inputs, max_batch_size)
    samples = samples or sample_inputs(inputs, rows=min(64, max_batch_size))
    reference = _onnxruntime_outputs(onnx_path, samples)
    notes: list[str] = []
    for precision in ["fp16", "fp32"] if fp16 else ["fp32"]:
        serialized = _build(trt, onnx_path, profile, precision)
        if serialized is None:
            notes.append(f"{precision}: TensorRT could not build the engine")
            continue
        outputs = _run_engine(trt, serialized, samples)
        diffs, agree = compare_outputs(reference, outputs)
        tolerance = FP16_TOLERANCE if precision == "fp16" else FP32_TOLERANCE
        if all(v <= tolerance for v in diffs.values()) and agree in (None, 1.0):
            plan_path = Path(plan_path)
            plan_path.parent.mkdir(parents=True, exist_ok=True)
            plan_path.write_bytes(bytes(serialized))
            product, capability = _gpu()
            return EngineResult(
                plan_path,
                precision,
                product,
                capability,
                trt.__version__,
                diffs,
                agree,
                profile.to_dict(),
                notes,
            )
        notes.append(f"{precision}: outputs differ from ONNX Runtime (max {diffs}, labels agree {agree})")
    raise EngineCheckError(
        "No TensorRT engine matched ONNX Runtime: " + "; ".join(notes) + ". Nothing was published."
    )


def sample_inputs(inputs: list[TensorSpec], rows: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    """Standard-normal rows (the graph scales its own inputs, so raw-scale values would also do)."""
    rng = np.random.default_rng(seed)
    dtypes = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16}
    return {
        t.name: rng.standard_normal((rows, *t.shape[1:])).astype(dtypes.get(t.datatype, np.float32))
        for t in inputs
    }


def compare_outputs(
    reference: dict[str, np.ndarray], got: dict[str, np.ndarray]
) -> tuple[dict[str, float], float | None]:
    """Max absolute difference per float output, and the share of labels that agree (if any)."""
    diffs, agree = {}, None
    for name, expected in reference.items():
        actual = np.asarray(got[name]).reshape(expected.shape)
        if np.issubdtype(expected.dtype, np.integer):
            agree = float(np.mean(actual.astype(np.int64) == expected.astype(np.int64)))
        else:
            diffs[name] = float(np.abs(actual.astype(np.float64) - expected).max(initial=0.0))
    return diffs, agree


def _onnxruntime_outputs(onnx_path: Path, samples: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, samples), strict=True))


def _build(trt, onnx_path: Path, profile: BatchProfile, precision: str):
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = (
        0
        if int(trt.__version__.split(".")[0]) >= 10
        else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    )
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise Unavailable(f"TensorRT's ONNX parser refused the graph: {errors[:500]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if precision == "fp16":
        if not builder.platform_has_fast_fp16:
            return None
        config.set_flag(trt.BuilderFlag.FP16)
    optimization = builder.create_optimization_profile()
    for name, (low, opt, high) in profile.shapes.items():
        optimization.set_shape(name, low, opt, high)
    config.add_optimization_profile(optimization)
    return builder.build_serialized_network(network, config)


def _run_engine(trt, serialized, samples: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run the engine once on the samples, with device buffers from PyTorch's CUDA allocator."""
    try:
        import torch
    except ImportError:
        raise Unavailable("Checking the engine needs PyTorch with CUDA for device buffers.") from None
    if not torch.cuda.is_available():
        raise Unavailable("Checking the engine needs a CUDA device; none is visible.")
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(bytes(serialized))
    context = engine.create_execution_context()
    buffers, outputs = {}, {}
    for name, array in samples.items():
        buffers[name] = torch.from_numpy(np.ascontiguousarray(array)).cuda()
        context.set_input_shape(name, tuple(array.shape))
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        if engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
            shape = tuple(context.get_tensor_shape(name))
            dtype = torch.from_numpy(np.zeros(1, dtype=trt.nptype(engine.get_tensor_dtype(name)))).dtype
            buffers[name] = torch.empty(shape, dtype=dtype, device="cuda")
            outputs[name] = buffers[name]
        context.set_tensor_address(name, buffers[name].data_ptr())
    stream = torch.cuda.Stream()
    if not context.execute_async_v3(stream.cuda_stream):
        raise EngineCheckError("TensorRT could not run the engine on the sample rows.")
    stream.synchronize()
    return {name: tensor.cpu().numpy() for name, tensor in outputs.items()}


def _gpu() -> tuple[str, str]:
    """The GPU's product name as NVIDIA's feature discovery labels it, and its compute capability."""
    import torch

    name = torch.cuda.get_device_name(0)
    major, minor = torch.cuda.get_device_capability(0)
    return name.replace(" ", "-"), f"{major}.{minor}"


def plan_config(package: dict[str, Any], model: str):
    """The GPU config.pbtxt rewritten for the tensorrt_plan platform (same tensors, no accelerator)."""
    export = package["export"]
    inputs = [TensorSpec(**t) for t in export["inputs"]]
    outputs = [TensorSpec(**t) for t in export["outputs"]]
    parameters = {
        "algorithm": export["algorithm"],
        "task_type": export["task_type"],
        "run_id": package.get("run_id", ""),
        "feature_columns": export["feature_columns"],
    }
    if export.get("classes"):
        parameters["classes"] = export["classes"]
    return triton.model_config(model, inputs, outputs, target="gpu", plan=True, parameters=parameters)


def publish_plan(
    store: ObjectStore, model: str, version: int, plan: bytes, engine: dict[str, Any]
) -> dict[str, Any]:
    """Put model.plan and the tensorrt_plan config into the version's GPU repository; package.json last."""
    package = triton.read_package(store, model, version)
    prefix = triton.store_prefix(model, version, "gpu")
    config_text = triton.render_config(plan_config(package, model)).encode()
    plan_key = f"{model}/{int(version)}/{triton.PLAN_FILE}"
    config_key = f"{model}/{triton.CONFIG_FILE}"
    store.put_bytes(f"{prefix}/{plan_key}", plan)
    store.put_bytes(f"{prefix}/{config_key}", config_text)
    gpu = package["targets"]["gpu"]
    gpu["files"][plan_key] = hashlib.sha256(plan).hexdigest()
    gpu["files"][config_key] = hashlib.sha256(config_text).hexdigest()
    gpu["plan"] = True
    gpu["tensorrt"] = {k: v for k, v in engine.items() if k != "plan_path"}
    store.put_bytes(
        f"{triton.store_prefix(model, version)}/{triton.PACKAGE_FILE}",
        json.dumps(package, indent=2, default=str).encode(),
    )
    return package


def build_for_package(
    store: ObjectStore, model: str, version: int, plan_dir: Path, *, max_batch_size: int | None = None
) -> EngineResult:
    """The build_tensorrt_engine step: the packaged GPU repository gains a checked model.plan
    (also left in plan_dir)."""
    tensorrt_module()  # refuse before downloading anything
    with tempfile.TemporaryDirectory(prefix="issueops-trt-") as work:
        repo = triton.fetch_model(store, model, version, Path(work) / "repo", target="gpu")
        config = triton.read_config(repo / model / triton.CONFIG_FILE)
        onnx_path = repo / model / str(int(version)) / triton.ONNX_FILE
        result = build_engine(
            onnx_path,
            Path(plan_dir) / triton.PLAN_FILE,
            max_batch_size=max_batch_size or config.max_batch_size or 1,
        )
    publish_plan(store, model, version, result.plan_path.read_bytes(), result.to_dict())
    return result
