"""build_tensorrt_engine: runs on a GPU node in NVIDIA's TensorRT image (plans are per GPU type and
TensorRT version, so the image matches the Triton release that serves them: 25.01 and 25.01)."""

import os

from kfp import dsl
from kfp.dsl import Input, Model, Output

# NVIDIA's nvcr.io/nvidia/tensorrt:25.01-py3 with issueops installed on top.
TENSORRT_IMAGE = os.environ.get("ISSUEOPS_TENSORRT_IMAGE", "ghcr.io/issueops/issueops-tensorrt:0.1.0")
GPU_RESOURCE = "nvidia.com/gpu"
GPU_NODE_LABEL = "nvidia.com/gpu.present"  # NVIDIA GPU feature discovery sets it on GPU nodes


@dsl.component(base_image=TENSORRT_IMAGE)
def build_tensorrt_engine(run_id: str, repository: Input[Model], engine: Output[Model]) -> str:
    """Build an FP16 TensorRT engine (FP32 fallback) with a dynamic-batch profile from the packaged
    ONNX graph, check it against ONNX Runtime and publish it as the GPU repository's model.plan.
    Graphs TensorRT cannot run are recorded as skipped."""
    import json

    from issueops.packaging.package import tensorrt_step

    outcome = tensorrt_step(run_id, engine.path)
    engine.metadata.update({k: outcome[k] for k in ("status", "precision", "gpu_product") if k in outcome})
    return json.dumps(outcome, default=str)


def add_gpu_placement(
    task: dsl.PipelineTask, *, gpu_product: str | None = None, count: int = 1
) -> dsl.PipelineTask:
    """One GPU for the task: the nvidia.com/gpu limit, a GPU node selector (a product to build a
    plan for that GPU type) and the toleration GPU nodes are usually tainted with."""
    from kfp import kubernetes

    task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(count)
    if gpu_product:
        kubernetes.add_node_selector(task, label_key="nvidia.com/gpu.product", label_value=gpu_product)
    else:
        kubernetes.add_node_selector(task, label_key=GPU_NODE_LABEL, label_value="true")
    kubernetes.add_toleration(task, key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")
    return task
