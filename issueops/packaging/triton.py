"""Triton model repositories: `config.pbtxt` written from the ONNX graph, numbered version folders.

Layout (one model repository per version and target, so a KServe `storageUri` can point at
exactly one version, which is what a canary rollout needs):

    <repo>/<model>/config.pbtxt
    <repo>/<model>/<version>/model.onnx      (model.plan when a TensorRT engine was built)

In the object store the repository of version N for target T (cpu | gpu) is
`triton/<model>/<N>/<T>/`, with `triton/<model>/<N>/package.json` written last (the export's
parity figures, tensor names, digests): a version without it is not packaged yet.

Every config is built as Triton's `ModelConfig` protobuf (tritonclient ships it) and written
with protobuf's text format, so it parses by construction; `read_config` parses one back.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from issueops.errors import InvalidInput, NotFound, Unavailable
from issueops.packaging.onnx_parity import TensorSpec
from issueops.store import ObjectStore

TARGETS = ("cpu", "gpu")
ONNX_FILE = "model.onnx"
PLAN_FILE = "model.plan"
CONFIG_FILE = "config.pbtxt"
PACKAGE_FILE = "package.json"
STORE_PREFIX = "triton"

DEFAULT_MAX_BATCH_SIZE = 256
# Triton waits this long for more requests to join a batch; small, as tabular models are fast.
DEFAULT_QUEUE_DELAY_US = 200
# ONNX Runtime's TensorRT execution accelerator on GPU nodes without a prebuilt plan.
TENSORRT_ACCELERATOR = {
    "precision_mode": "FP16",
    "max_workspace_size_bytes": str(1 << 30),
    "trt_engine_cache_enable": "true",
    "trt_engine_cache_path": "/tmp/trt-cache",
}

_TRITON_TYPES = {
    "FP32": "TYPE_FP32",
    "FP64": "TYPE_FP64",
    "FP16": "TYPE_FP16",
    "INT64": "TYPE_INT64",
    "INT32": "TYPE_INT32",
    "INT8": "TYPE_INT8",
    "UINT8": "TYPE_UINT8",
    "BOOL": "TYPE_BOOL",
    "BYTES": "TYPE_STRING",
}


@cache
def _pb():
    """tritonclient's ModelConfig protobuf module, loaded on its own.

    `import tritonclient.grpc` also registers Triton's gRPC service messages, which clash with
    kserve's copies of the same protocol in one process (the local server has kserve loaded).
    """
    loaded = sys.modules.get("tritonclient.grpc.model_config_pb2")
    if loaded is not None:
        return loaded
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:
        raise Unavailable("tritonclient is not installed; it provides Triton's ModelConfig definition.")
    path = Path(spec.submodule_search_locations[0]) / "grpc" / "model_config_pb2.py"
    module_spec = importlib.util.spec_from_file_location("issueops_triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def triton_type(datatype: str) -> str:
    """Triton's TYPE_* name for a V2 datatype."""
    try:
        return _TRITON_TYPES[datatype]
    except KeyError:
        raise InvalidInput(f"Tensor type {datatype} has no Triton equivalent.") from None


def v2_datatype(triton: str) -> str:
    """The V2 datatype for Triton's TYPE_* name."""
    for v2, name in _TRITON_TYPES.items():
        if name == triton:
            return v2
    raise InvalidInput(f"Triton type {triton} is not supported here.")


def model_config(
    name: str,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    *,
    target: str = "cpu",
    plan: bool = False,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
    instances: int = 1,
    parameters: Mapping[str, Any] | None = None,
):
    """The ModelConfig for a model with these tensors on this target.

    A leading -1 on every tensor means the graph batches: dims drop it and max_batch_size is
    set; a tensor of rank 1 (a batch of scalars) becomes dims [1] reshaped to [] (Triton's rule).
    """
    pb = _pb()
    if target not in TARGETS:
        raise InvalidInput(f"target must be one of {', '.join(TARGETS)}, not {target!r}.")
    if plan and target != "gpu":
        raise InvalidInput("A TensorRT plan runs only on a GPU target.")
    batching = all(t.shape and t.shape[0] == -1 for t in [*inputs, *outputs])
    config = pb.ModelConfig(name=name, max_batch_size=max_batch_size if batching else 0)
    if plan:
        config.platform = "tensorrt_plan"
        config.default_model_filename = PLAN_FILE
    else:
        config.platform = "onnxruntime_onnx"
        config.backend = "onnxruntime"
        config.default_model_filename = ONNX_FILE
    for spec, field in [(t, config.input) for t in inputs] + [(t, config.output) for t in outputs]:
        dims = list(spec.shape[1:] if batching else spec.shape)
        tensor = field.add(name=spec.name, data_type=pb.DataType.Value(triton_type(spec.datatype)))
        if batching and not dims:
            tensor.dims.append(1)
            tensor.reshape.SetInParent()  # reshape { shape: [] }
        else:
            tensor.dims.extend(dims)
    kind = pb.ModelInstanceGroup.KIND_GPU if target == "gpu" else pb.ModelInstanceGroup.KIND_CPU
    config.instance_group.add(count=instances, kind=kind)
    if batching:
        config.dynamic_batching.max_queue_delay_microseconds = queue_delay_us
    if target == "gpu" and not plan:
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(
            name="tensorrt"
        )
        accelerator.parameters.update(TENSORRT_ACCELERATOR)
    for key, value in (parameters or {}).items():
        config.parameters[key].string_value = value if isinstance(value, str) else json.dumps(value)
    return config


def render_config(config) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(config)


def read_config(source: str | Path):
    """Parse config.pbtxt text (or a path to one) as ModelConfig; InvalidInput naming the problem."""
    from google.protobuf import text_format

    text = Path(source).read_text() if isinstance(source, Path) else source
    try:
        return text_format.Parse(text, _pb().ModelConfig())
    except text_format.ParseError as exc:
        raise InvalidInput(f"config.pbtxt does not parse as Triton's ModelConfig: {exc}") from None


def config_tensors(config) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Input and output tensors of a config in V2 terms (batch dimension as -1)."""
    pb = _pb()

    def spec(tensor) -> TensorSpec:
        dims = [] if tensor.HasField("reshape") and not tensor.reshape.shape else list(tensor.dims)
        shape = ([-1] if config.max_batch_size else []) + dims
        return TensorSpec(tensor.name, v2_datatype(pb.DataType.Name(tensor.data_type)), shape)

    return [spec(t) for t in config.input], [spec(t) for t in config.output]


def config_parameters(config) -> dict[str, Any]:
    found = {}
    for key, value in config.parameters.items():
        try:
            found[key] = json.loads(value.string_value)
        except ValueError:
            found[key] = value.string_value
    return found


def write_model(
    repo: Path,
    name: str,
    version: int,
    config,
    *,
    onnx_path: Path | None = None,
    plan_path: Path | None = None,
) -> Path:
    """Write <repo>/<name>/config.pbtxt and <repo>/<name>/<version>/ with the model file(s)."""
    if config.name != name:
        raise InvalidInput(f"config.pbtxt names model {config.name!r}, its folder is {name!r}.")
    if int(version) < 1:
        raise InvalidInput("Triton version folders are numbered from 1.")
    model_dir = Path(repo) / name
    version_dir = model_dir / str(int(version))
    version_dir.mkdir(parents=True, exist_ok=True)
    for source, filename in ((onnx_path, ONNX_FILE), (plan_path, PLAN_FILE)):
        if source is not None:
            (version_dir / filename).write_bytes(Path(source).read_bytes())
    (model_dir / CONFIG_FILE).write_text(render_config(config))
    return model_dir


def store_prefix(model: str, version: int, target: str | None = None) -> str:
    base = f"{STORE_PREFIX}/{model}/{int(version)}"
    return f"{base}/{target}" if target else base


def upload_repository(store: ObjectStore, repo: Path, model: str, version: int, target: str) -> str:
    """Upload a one-model repository to triton/<model>/<version>/<target>/; returns its URI."""
    prefix = store_prefix(model, version, target)
    for path in sorted(Path(repo).rglob("*")):
        if path.is_file():
            store.put_bytes(f"{prefix}/{path.relative_to(repo).as_posix()}", path.read_bytes())
    return store.uri(prefix)


def read_package(store: ObjectStore, model: str, version: int) -> dict[str, Any]:
    """package.json of a packaged version; NotFound when the version was never packaged."""
    key = f"{store_prefix(model, version)}/{PACKAGE_FILE}"
    if not store.exists(key):
        raise NotFound(
            f"Version {version} of {model} is not packaged (no {key} in the object store); "
            f"run `issueops package {model} --version {version}`."
        )
    return json.loads(store.get_bytes(key))


def fetch_model(store: ObjectStore, model: str, version: int, dest: Path, *, target: str = "cpu") -> Path:
    """Download a packaged version's repository for `target` into dest and check its digests.

    Returns dest (a model repository holding <model>/config.pbtxt and <model>/<version>/...).
    Raises NotFound for a version never packaged or a missing file, InvalidInput for a file whose
    digest differs from the one recorded at packaging.
    """
    package = read_package(store, model, version)
    prefix = store_prefix(model, version, target)
    digests: dict[str, str] = package.get("targets", {}).get(target, {}).get("files", {})
    if not digests:
        raise NotFound(f"Version {version} of {model} has no {target} repository in its package.")
    for relative, digest in digests.items():
        key = f"{prefix}/{relative}"
        if not store.exists(key):
            raise NotFound(f"{key} is missing from the object store.")
        data = store.get_bytes(key)
        if hashlib.sha256(data).hexdigest() != digest:
            raise InvalidInput(
                f"{key} is corrupt: its sha256 differs from the one recorded when it was packaged."
            )
        target_path = Path(dest) / relative
        target_path.parent.mkdir(parents=True, exist_ok=True)
        target_path.write_bytes(data)
    return Path(dest)


def file_digests(repo: Path) -> dict[str, str]:
    return {
        path.relative_to(repo).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(Path(repo).rglob("*"))
        if path.is_file()
    }
