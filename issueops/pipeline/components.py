"""The KFP components: one per step, each a thin wrapper that calls its step in issueops.pipeline.steps.

On a cluster every component runs in the image built from Dockerfile.components (COMPONENT_IMAGE);
build_tensorrt_engine runs in NVIDIA's TensorRT image on a GPU node. The top-level components/
package re-exports these under the names the design gives them.
"""

import functools
from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from issueops.config import Settings

COMPONENT_IMAGE = Settings.from_env().component_image

# The image (and the local venv) already hold kfp: installing it again costs every task a pip run.
component = functools.partial(dsl.component, base_image=COMPONENT_IMAGE, install_kfp_package=False)


@component
def prepare_data(spec_json: str, run_id: str, processed: Output[Dataset]):
    """Validate the dataset, split it (stratified, seeded) and fit the preprocessing on train."""
    from issueops.pipeline.steps import prepare_data_step

    metadata = prepare_data_step(spec_json, run_id, processed.path)
    processed.metadata.update({k: metadata[k] for k in ("num_samples", "num_features") if k in metadata})


@component
def train(spec_json: str, run_id: str, processed: Input[Dataset], model: Output[Model]):
    """Train the spec's algorithm; the model and its preprocessing are saved together."""
    from issueops.pipeline.steps import train_step

    manifest = train_step(spec_json, run_id, processed.path, model.path)
    model.metadata.update({"algorithm": manifest["algorithm"], "framework": manifest.get("format", "")})


@component
def evaluate(
    spec_json: str,
    run_id: str,
    processed: Input[Dataset],
    model: Input[Model],
    metrics: Output[Metrics],
    classification_metrics: Output[ClassificationMetrics],
    evaluation: Output[Artifact],
):
    """Metrics on the held-out test split, results.json and plots."""
    from issueops.pipeline.steps import evaluate_step

    result = evaluate_step(spec_json, run_id, processed.path, model.path, evaluation.path)
    for name, value in result.metrics.items():
        if isinstance(value, (int, float)) and value == value:
            metrics.log_metric(name, float(value))
    if "confusion_matrix" in result.details:
        classification_metrics.log_confusion_matrix(
            result.details["classes"], result.details["confusion_matrix"]
        )
    curves = list(result.details.get("roc", {}).values())
    if len(curves) == 1:  # KFP's ROC artifact holds one curve: the binary case
        classification_metrics.log_roc_curve(curves[0]["fpr"], curves[0]["tpr"], curves[0]["thresholds"])


@component
def judge(spec_json: str, run_id: str, evaluation: Input[Artifact], attempt: int) -> NamedTuple(
    "JudgeOutputs", [("decision", str), ("message", str)]
):
    """pass, retrain or fail, against the spec's threshold and the attempts left."""
    from collections import namedtuple

    from issueops.pipeline.steps import judge_step

    verdict = judge_step(spec_json, run_id, evaluation.path, attempt)
    return namedtuple("JudgeOutputs", ["decision", "message"])(verdict.decision, verdict.message)


@component
def register(run_id: str) -> str:
    """Log the attempt to MLflow and register a new model version, pending: production does not
    move here but in `promote`, once the version is packaged."""
    import json

    from issueops.pipeline.steps import register_step

    return json.dumps(register_step(run_id))


@component
def package(run_id: str, repository: Output[Model]) -> str:
    """Export the registered version to ONNX (parity-checked on the test split) and publish its
    Triton repositories (cpu, gpu) to the object store; the local repository is the artifact."""
    import json

    from issueops.pipeline.steps import package_step

    result = package_step(run_id, repository.path)
    repository.metadata.update(
        {k: result[k] for k in ("model", "version", "servable", "targets") if k in result}
    )
    return json.dumps(result, default=str)


# NVIDIA's nvcr.io/nvidia/tensorrt:25.01-py3 with issueops installed on top.
TENSORRT_IMAGE = Settings.from_env().tensorrt_image
GPU_RESOURCE = "nvidia.com/gpu"
GPU_NODE_LABEL = "nvidia.com/gpu.present"  # NVIDIA GPU feature discovery sets it on GPU nodes


@dsl.component(base_image=TENSORRT_IMAGE)
def build_tensorrt_engine(run_id: str, repository: Input[Model], engine: Output[Model]) -> str:
    """Build an FP16 TensorRT engine (FP32 fallback) with a dynamic-batch profile from the packaged
    ONNX graph, check it against ONNX Runtime and publish it as the GPU repository's model.plan.
    Graphs TensorRT cannot run are recorded as skipped."""
    import json

    from issueops.pipeline.steps import tensorrt_step

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


@component
def promote(run_id: str) -> str:
    """Where production moves: approve the version this run registered (and packaged) into the
    `production` alias, unless the spec or ISSUEOPS_MANUAL_APPROVAL asks for a human's /approve;
    a version that failed packaging never gets here. Records the outcome in registration.json."""
    import json

    from issueops.pipeline.steps import promote_step

    return json.dumps(promote_step(run_id))


@component
def deploy(run_id: str, repository: Input[Model]) -> str:
    """Serve the packaged version as `promote` left it: a KServe InferenceService when
    ISSUEOPS_SERVING=kserve (primary when promoted, a canary while it waits for /approve), else the
    local endpoint, which follows production by itself; records the endpoint."""
    import json

    from issueops.pipeline.steps import deploy_step

    return json.dumps(deploy_step(run_id), default=str)


@component
def rollback(run_id: str) -> str:
    """Keep production as it was before this request: undo what the request promoted."""
    import json

    from issueops.pipeline.steps import rollback_step

    return json.dumps(rollback_step(run_id))


@component
def write_history(run_id: str) -> str:
    """Commit the run's history markdown and plots (local git repository or GitHub)."""
    import json

    from issueops.pipeline.steps import write_history_step

    return json.dumps(write_history_step(run_id))


@component
def notify(run_id: str, notification_type: str) -> str:
    """Announce the run on GitHub, Slack, Teams, Discord and email as configured; never fails the run."""
    import json

    from issueops.pipeline.steps import notify_step

    return json.dumps(notify_step(run_id, notification_type))
