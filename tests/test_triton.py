"""Triton repositories from real exported graphs, their upload to a real object store, the TensorRT
path as far as it runs without TensorRT, and the KFP components that carry them."""

import json
from pathlib import Path

import numpy as np
import pytest

from issueops.errors import InvalidInput, NotFound, Unavailable
from issueops.packaging import tensorrt, triton
from issueops.packaging.onnx import export_model
from issueops.packaging.onnx_parity import TensorSpec
from tests.conftest import REPO


def parses_as_model_config(text: str):
    """Parse with tritonclient's ModelConfig through protobuf's text format, independently of triton.py."""
    import importlib.util

    from google.protobuf import text_format

    spec = importlib.util.find_spec("tritonclient")
    path = Path(spec.submodule_search_locations[0]) / "grpc" / "model_config_pb2.py"
    module_spec = importlib.util.spec_from_file_location("test_model_config_pb2", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return text_format.Parse(text, module.ModelConfig())


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A random forest (breast cancer) and an MLP (wine) trained and exported, with their packages' parameters."""
    from issueops.config import Settings
    from issueops.data.prepare import PreparedData, prepare_data
    from issueops.spec.body import parse_issue_body
    from issueops.store import open_store
    from issueops.training.train import train_model

    root = tmp_path_factory.mktemp("triton")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ISSUEOPS_HOME", str(root / "home"))
        patch.setenv("ISSUEOPS_DATA_ROOTS", str(REPO))
        settings = Settings.from_env()
        store = open_store(settings)
        found = {}
        for key, body in {
            "rf": "algorithm: random_forest\ndataset_id: sklearn:breast_cancer\nhyperparameters: {n_estimators: 20}",
            "mlp": "algorithm: neural_network\ndataset_id: sklearn:wine\nhyperparameters: {epochs: 15}",
        }.items():
            spec = parse_issue_body(f"learning_type: supervised\n{body}")
            prepare_data(spec, settings, store, root / key / "p")
            train_model(spec, root / key / "p", root / key / "m", run_id=f"run-{key}")
            test = PreparedData.open(root / key / "p").table("test")
            found[key] = export_model(root / key / "m", test, root / key / "model.onnx")
    return found


def config_for(result, target="cpu", plan=False):
    return triton.model_config(
        "demo",
        result.inputs,
        result.outputs,
        target=target,
        plan=plan,
        parameters={"feature_columns": result.feature_columns, "classes": result.classes},
    )


@pytest.mark.parametrize(
    "target, plan", [("cpu", False), ("gpu", False), ("gpu", True)], ids=["cpu", "gpu", "plan"]
)
def test_configs_from_real_graphs_parse_as_model_config(exported, target, plan):
    for result in exported.values():
        config = config_for(result, target, plan)
        parsed = parses_as_model_config(triton.render_config(config))
        assert parsed == config
        assert parsed.max_batch_size == triton.DEFAULT_MAX_BATCH_SIZE
        assert parsed.dynamic_batching.max_queue_delay_microseconds == triton.DEFAULT_QUEUE_DELAY_US
        assert [(i.name, list(i.dims)) for i in parsed.input] == [("input", [result.inputs[0].shape[1]])]
        label = next(o for o in parsed.output if o.name == "label")
        assert list(label.dims) == [1] and label.HasField("reshape") and not label.reshape.shape
        assert parsed.instance_group[0].kind == (2 if target == "cpu" else 1)  # KIND_CPU = 2, KIND_GPU = 1
        accelerators = parsed.optimization.execution_accelerators.gpu_execution_accelerator
        if target == "gpu" and not plan:
            assert (
                accelerators[0].name == "tensorrt" and accelerators[0].parameters["precision_mode"] == "FP16"
            )
        else:
            assert not accelerators
        assert parsed.platform == ("tensorrt_plan" if plan else "onnxruntime_onnx")
        assert triton.config_tensors(parsed) == (result.inputs, result.outputs)
    assert exported["rf"].inputs[0].datatype == "FP64" and exported["mlp"].inputs[0].datatype == "FP32"


def test_config_refusals():
    spec = [TensorSpec("input", "FP32", [-1, 3])], [TensorSpec("prediction", "FP32", [-1, 1])]
    with pytest.raises(InvalidInput, match="GPU target"):
        triton.model_config("m", *spec, target="cpu", plan=True)
    with pytest.raises(InvalidInput, match="target must be"):
        triton.model_config("m", *spec, target="tpu")
    with pytest.raises(InvalidInput, match="ModelConfig"):
        triton.read_config('name: "m"\nmax_batch_sise: 4\n')
    fixed = triton.model_config("m", [TensorSpec("input", "FP32", [4, 3])], [TensorSpec("y", "FP32", [4, 1])])
    assert fixed.max_batch_size == 0 and list(fixed.input[0].dims) == [4, 3]


def test_templates_are_what_the_code_writes():
    configs = sorted((REPO / "triton_models" / "templates").rglob("config.pbtxt"))
    assert [c.relative_to(REPO / "triton_models" / "templates").parts[0] for c in configs] == [
        "cpu",
        "gpu",
        "gpu-plan",
    ]
    for path in configs:
        parsed = parses_as_model_config(path.read_text())
        assert parsed.name == path.parent.name
        inputs, outputs = triton.config_tensors(parsed)
        target, plan = ("cpu", False) if path.parts[-3] == "cpu" else ("gpu", path.parts[-3] == "gpu-plan")
        regenerated = triton.model_config(
            parsed.name,
            inputs,
            outputs,
            target=target,
            plan=plan,
            parameters=triton.config_parameters(parsed),
        )
        assert path.read_text() == triton.render_config(regenerated)


def test_repository_layout_and_refusals(exported, tmp_path):
    result = exported["rf"]
    model_dir = triton.write_model(
        tmp_path / "repo", "demo", 3, config_for(result), onnx_path=result.onnx_path
    )
    assert sorted(
        p.relative_to(tmp_path / "repo").as_posix() for p in (tmp_path / "repo").rglob("*") if p.is_file()
    ) == ["demo/3/model.onnx", "demo/config.pbtxt"]
    assert parses_as_model_config((model_dir / "config.pbtxt").read_text()).name == "demo"
    with pytest.raises(InvalidInput, match="folder is 'other'"):
        triton.write_model(tmp_path / "repo", "other", 1, config_for(result))
    with pytest.raises(InvalidInput, match="numbered from 1"):
        triton.write_model(tmp_path / "repo", "demo", 0, config_for(result))


def publish(store, tmp_path, result, model="demo", version=1) -> dict:
    """What package_model publishes, for one exported graph."""
    targets, files = {}, {}
    for target in triton.TARGETS:
        staging = tmp_path / f"{model}-{version}-{target}"
        triton.write_model(
            staging,
            model,
            version,
            config_for(result, target)
            if model == "demo"
            else triton.model_config(model, result.inputs, result.outputs, target=target),
            onnx_path=result.onnx_path,
        )
        files[target] = triton.file_digests(staging)
        targets[target] = triton.upload_repository(store, staging, model, version, target)
    export = {k: v for k, v in result.to_dict().items() if k != "onnx_path"}
    package = {
        "model": model,
        "version": version,
        "run_id": result.run_id,
        "export": export,
        "targets": {t: {"uri": targets[t], "files": files[t], "plan": False} for t in targets},
    }
    store.put_bytes(f"triton/{model}/{version}/package.json", json.dumps(package).encode())
    return package


def test_upload_to_real_s3_and_fetch_back_with_digests(exported, s3_endpoint, monkeypatch, tmp_path, home):
    from issueops.config import Settings
    from issueops.store import S3Store, open_store

    monkeypatch.setenv("ISSUEOPS_S3_ENDPOINT", s3_endpoint)
    monkeypatch.setenv("ISSUEOPS_S3_BUCKET", "issueops-triton")
    store = open_store(Settings.from_env())
    assert isinstance(store, S3Store)
    store.client.create_bucket(Bucket="issueops-triton")
    package = publish(store, tmp_path, exported["mlp"])
    assert package["targets"]["gpu"]["uri"] == "s3://issueops-triton/triton/demo/1/gpu"  # a KServe storageUri
    assert set(store.list("triton/demo/1/cpu")) == {
        "triton/demo/1/cpu/demo/config.pbtxt",
        "triton/demo/1/cpu/demo/1/model.onnx",
    }
    repo = triton.fetch_model(store, "demo", 1, tmp_path / "fetched")
    assert (repo / "demo" / "1" / "model.onnx").read_bytes() == exported["mlp"].onnx_path.read_bytes()
    parses_as_model_config((repo / "demo" / "config.pbtxt").read_text())

    store.put_bytes("triton/demo/1/cpu/demo/1/model.onnx", b"not an onnx graph")
    with pytest.raises(InvalidInput, match="is corrupt"):
        triton.fetch_model(store, "demo", 1, tmp_path / "again")
    store.put_bytes("triton/demo/1/cpu/demo/1/model.onnx", exported["mlp"].onnx_path.read_bytes())
    store.client.delete_object(Bucket="issueops-triton", Key="triton/demo/1/cpu/demo/config.pbtxt")
    with pytest.raises(NotFound, match="missing"):
        triton.fetch_model(store, "demo", 1, tmp_path / "again")
    with pytest.raises(NotFound, match="not packaged"):
        triton.fetch_model(store, "demo", 2, tmp_path / "again")


# TensorRT: everything up to the engine build runs here; the build itself is marked gpu.


def test_batch_profile_covers_one_row_to_max_batch():
    profile = tensorrt.batch_profile([TensorSpec("input", "FP32", [-1, 13])], 256)
    assert profile.shapes == {"input": ((1, 13), (64, 13), (256, 13))}
    assert profile.to_dict()["input"] == {"min": [1, 13], "opt": [64, 13], "max": [256, 13]}
    with pytest.raises(Unavailable, match="text"):
        tensorrt.batch_profile([TensorSpec("categorical", "BYTES", [-1, 2])], 8)
    with pytest.raises(InvalidInput):
        tensorrt.batch_profile([TensorSpec("input", "FP32", [5, 13])], 8)


def test_only_standard_op_graphs_can_become_engines(exported, tmp_path):
    import onnx

    rf, mlp = (onnx.load(str(exported[k].onnx_path)) for k in ("rf", "mlp"))
    assert exported["mlp"].standard_ops_only and not exported["rf"].standard_ops_only
    assert tensorrt.engine_blockers(mlp) == []
    assert "ai.onnx.ml.TreeEnsembleClassifier" in tensorrt.engine_blockers(rf)[0]
    with pytest.raises(Unavailable, match="TreeEnsembleClassifier.*TensorRT accelerator"):
        tensorrt.build_engine(exported["rf"].onnx_path, tmp_path / "model.plan")


def tensorrt_installed() -> bool:
    try:
        import tensorrt as _  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(tensorrt_installed(), reason="TensorRT is installed: the refusal does not apply")
def test_without_tensorrt_the_build_is_refused_clearly(exported, tmp_path):
    with pytest.raises(Unavailable, match="TensorRT is not installed.*build_tensorrt_engine"):
        tensorrt.build_engine(exported["mlp"].onnx_path, tmp_path / "model.plan")
    assert not (tmp_path / "model.plan").exists()


def test_compare_outputs_measures_drift_and_label_agreement():
    reference = {"label": np.array([0, 1, 2, 1]), "probabilities": np.array([[0.5, 0.5], [0.2, 0.8]])}
    got = {
        "label": np.array([0, 1, 2, 2]),
        "probabilities": np.array([[0.49, 0.51], [0.2, 0.8]], dtype=np.float16),
    }
    diffs, agree = tensorrt.compare_outputs(reference, got)
    assert agree == 0.75 and diffs["probabilities"] == pytest.approx(0.01, abs=1e-3)


def test_a_published_plan_rewrites_the_gpu_repository(exported, store, tmp_path):
    publish(store, tmp_path, exported["mlp"], model="wine-mlp", version=2)
    engine = {
        "precision": "fp16",
        "gpu_product": "NVIDIA-L4",
        "compute_capability": "8.9",
        "tensorrt_version": "10.8",
    }
    package = tensorrt.publish_plan(store, "wine-mlp", 2, b"\x00plan-bytes", engine)
    assert (
        package["targets"]["gpu"]["plan"] is True
        and package["targets"]["gpu"]["tensorrt"]["gpu_product"] == "NVIDIA-L4"
    )
    repo = triton.fetch_model(
        store, "wine-mlp", 2, tmp_path / "gpu", target="gpu"
    )  # digests include the plan
    config = parses_as_model_config((repo / "wine-mlp" / "config.pbtxt").read_text())
    assert config.platform == "tensorrt_plan" and config.default_model_filename == "model.plan"
    assert (repo / "wine-mlp" / "2" / "model.plan").read_bytes() == b"\x00plan-bytes"
    assert triton.config_tensors(config) == (exported["mlp"].inputs, exported["mlp"].outputs)
    cpu = triton.read_config(
        triton.fetch_model(store, "wine-mlp", 2, tmp_path / "cpu") / "wine-mlp" / "config.pbtxt"
    )
    assert cpu.platform == "onnxruntime_onnx"  # the CPU repository is untouched

    from issueops.serving.kserve import Placement

    placement = Placement.for_package(triton.read_package(store, "wine-mlp", 2), "gpu")
    assert placement == Placement("gpu", True, "NVIDIA-L4")


@pytest.mark.gpu
def test_tensorrt_engine_matches_onnxruntime(exported, tmp_path):
    if not tensorrt_installed():
        pytest.skip(
            "TensorRT is not installed (PyPI has only installer stubs); run in nvcr.io/nvidia/tensorrt"
        )
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    result = tensorrt.build_engine(exported["mlp"].onnx_path, tmp_path / "model.plan", max_batch_size=64)
    assert result.plan_path.stat().st_size > 0 and result.precision in ("fp16", "fp32")
    assert result.labels_agree == 1.0


def test_components_compile_with_gpu_placement(tmp_path):
    import yaml
    from kfp import compiler, dsl

    from components.build_tensorrt_engine import TENSORRT_IMAGE, add_gpu_placement, build_tensorrt_engine
    from components.deploy import deploy
    from components.package import package

    @dsl.pipeline(name="serving-steps")
    def serving_steps(run_id: str):
        packaged = package(run_id=run_id)
        engine = add_gpu_placement(
            build_tensorrt_engine(run_id=run_id, repository=packaged.outputs["repository"]),
            gpu_product="NVIDIA-L4",
        )
        deploy(run_id=run_id, repository=packaged.outputs["repository"]).after(engine)

    compiler.Compiler().compile(serving_steps, str(tmp_path / "p.yaml"))
    ir, platform = yaml.safe_load_all((tmp_path / "p.yaml").read_text())
    executors = ir["deploymentSpec"]["executors"]
    trt = executors["exec-build-tensorrt-engine"]["container"]
    assert trt["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert trt["resources"]["accelerator"]["resourceCount"] == "1"
    assert (
        trt["image"] == TENSORRT_IMAGE and executors["exec-package"]["container"]["image"] != TENSORRT_IMAGE
    )
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-build-tensorrt-engine"]
    assert k8s["nodeSelector"]["labels"] == {"nvidia.com/gpu.product": "NVIDIA-L4"}
    assert k8s["tolerations"] == [{"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}]
    assert "resources" not in executors["exec-package"]["container"]  # only the engine build takes a GPU
    outputs = ir["components"]["comp-package"]["outputDefinitions"]["artifacts"]["repository"]
    assert outputs["artifactType"]["schemaTitle"] == "system.Model"
