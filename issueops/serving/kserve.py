"""KServe on the cluster: one InferenceService per registered model, served by Triton.

A new version goes out as a canary (`canaryTrafficPercent` of the traffic to the new revision,
the rest to the one before) until it is approved; approval promotes it to all the traffic, a
rollback applies the earlier version again. Every change is a server-side apply by the field
manager `issueops`, so fields we stop setting (the canary percentage) are removed.

CPU versions run the ONNX model on Triton's ONNX Runtime backend; GPU versions get one
`nvidia.com/gpu`, a node selector and a toleration, and the TensorRT plan when one was built (its
node selector then names the GPU product the plan was built for: plans are per GPU type).
Canary rollouts need KServe's Serverless (Knative) mode.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass
from typing import Any

from issueops import custom_resources
from issueops.config import Settings
from issueops.custom_resources import CustomResource
from issueops.errors import InvalidInput
from issueops.store import ObjectStore

GROUP, VERSION, PLURAL, KIND = "serving.kserve.io", "v1beta1", "inferenceservices", "InferenceService"
RUNTIME = "issueops-triton"  # manifests/kserve/servingruntime-triton.yaml
SERVICE_ACCOUNT = "issueops-serving"  # manifests/kserve/serviceaccount.yaml (S3 credentials)
DEFAULT_NAMESPACE = "issueops"
DEFAULT_CANARY_PERCENT = 10
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRESENT_LABEL = "nvidia.com/gpu.present"  # set by NVIDIA's GPU feature discovery
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
VERSION_ANNOTATION = "issueops.io/version"  # the receiver reads it from the logger's ce-annotations
MAX_NAME = 45  # KServe keeps InferenceService names short enough for the Knative names derived from them
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def service_name(model: str) -> str:
    """A DNS-1123 label for the model's InferenceService (lowercase, '-', at most 45 characters)."""
    name = re.sub(r"[^a-z0-9-]+", "-", model.lower()).strip("-")
    name = name if name[:1].isalpha() else f"m-{name}"
    if len(name) > MAX_NAME:
        digest = hashlib.sha256(model.encode()).hexdigest()[:6]
        name = f"{name[: MAX_NAME - 7].rstrip('-')}-{digest}"
    if not _DNS_LABEL.fullmatch(name):
        raise InvalidInput(f"Model name {model!r} cannot be turned into a Kubernetes name.")
    return name


@dataclass
class Placement:
    """Where a version runs: cpu, or gpu (with a TensorRT plan built for `gpu_product`)."""

    device: str = "cpu"
    plan: bool = False
    gpu_product: str | None = None

    @classmethod
    def for_package(cls, package: dict[str, Any], device: str) -> Placement:
        if device not in ("cpu", "gpu"):
            raise InvalidInput(f"device must be cpu or gpu, not {device!r}.")
        if device == "cpu":
            return cls()
        gpu = package.get("targets", {}).get("gpu", {})
        return cls("gpu", bool(gpu.get("plan")), (gpu.get("tensorrt") or {}).get("gpu_product"))


def inference_service(
    model: str,
    version: int,
    storage_uri: str,
    *,
    namespace: str = DEFAULT_NAMESPACE,
    placement: Placement | None = None,
    canary_percent: int | None = None,
    run_id: str | None = None,
    payload_logger_url: str | None = None,
) -> dict[str, Any]:
    """The InferenceService manifest serving `version` of `model` from its Triton repository; with
    `payload_logger_url`, KServe's logger posts every request and response there (the
    `issueops monitor serve` receiver), with the version annotation so each event names it."""
    placement = placement or Placement()
    if canary_percent is not None and not 0 <= canary_percent <= 100:
        raise InvalidInput("canaryTrafficPercent is a percentage (0-100).")
    if not storage_uri.startswith(("s3://", "gs://", "pvc://", "https://")):
        raise InvalidInput(
            f"{storage_uri} is not reachable from a cluster; set ISSUEOPS_S3_BUCKET so packages go to S3."
        )
    resources: dict[str, Any] = {
        "requests": {"cpu": "1", "memory": "2Gi"},
        "limits": {"cpu": "2", "memory": "4Gi"},
    }
    predictor: dict[str, Any] = {
        "serviceAccountName": SERVICE_ACCOUNT,
        "minReplicas": 1,
        "maxReplicas": 3,
    }
    if canary_percent is not None:
        predictor["canaryTrafficPercent"] = canary_percent
    if payload_logger_url:
        predictor["logger"] = {
            "mode": "all",
            "url": payload_logger_url,
            "metadataAnnotations": [VERSION_ANNOTATION],
        }
    if placement.device == "gpu":
        resources["limits"][GPU_RESOURCE] = "1"
        resources["requests"][GPU_RESOURCE] = "1"
        if placement.plan and placement.gpu_product:
            predictor["nodeSelector"] = {GPU_PRODUCT_LABEL: placement.gpu_product}
        else:
            predictor["nodeSelector"] = {GPU_PRESENT_LABEL: "true"}
        predictor["tolerations"] = [dict(GPU_TOLERATION)]
    predictor["model"] = {
        "modelFormat": {"name": "triton"},
        "runtime": RUNTIME,
        "protocolVersion": "v2",
        "storageUri": storage_uri,
        "resources": resources,
    }
    annotations = {VERSION_ANNOTATION: str(version), "issueops.io/device": placement.device}
    if run_id:
        annotations["issueops.io/run-id"] = run_id
    if placement.plan:
        annotations["issueops.io/tensorrt-plan"] = placement.gpu_product or "unknown"
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {
            "name": service_name(model),
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/managed-by": "issueops",
                "app.kubernetes.io/part-of": "issueops",
                "issueops.io/model": service_name(model),
            },
            "annotations": annotations,
        },
        "spec": {"predictor": predictor},
    }


INFERENCE_SERVICES = CustomResource(GROUP, VERSION, PLURAL, KIND, "KServe")


def api_client():
    return custom_resources.api_client("ISSUEOPS_SERVING=kserve")


def apply(manifest: dict[str, Any], *, api=None) -> dict[str, Any]:
    return INFERENCE_SERVICES.apply(manifest, api=api or api_client())


def get(model: str, namespace: str = DEFAULT_NAMESPACE, *, api=None) -> dict[str, Any] | None:
    return INFERENCE_SERVICES.get(namespace, service_name(model), api=api or api_client())


@dataclass
class Deployment:
    mode: str
    name: str
    namespace: str
    model: str
    version: int
    previous_version: int | None
    canary_percent: int | None
    device: str
    storage_uri: str
    endpoint: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _served_version(existing: dict[str, Any] | None) -> int | None:
    if not existing:
        return None
    value = existing.get("metadata", {}).get("annotations", {}).get(VERSION_ANNOTATION)
    return int(value) if value and value.isdigit() else None


def _endpoint(model: str, name: str, namespace: str, applied: dict[str, Any] | None) -> str:
    url = ((applied or {}).get("status") or {}).get("url") or f"http://{name}.{namespace}.svc.cluster.local"
    return f"{url.rstrip('/')}/v2/models/{model}"


def deploy_version(
    model: str,
    version: int,
    *,
    store: ObjectStore,
    approved: bool,
    namespace: str | None = None,
    device: str | None = None,
    canary_percent: int | None = None,
    api=None,
) -> Deployment:
    """Roll `version` out: to all traffic when approved (or when nothing is served yet), else as a
    canary beside the version being served."""
    from issueops.packaging.triton import read_package

    settings = Settings.from_env()
    namespace = namespace or settings.namespace
    device = device or settings.serving_device
    package = read_package(store, model, version)
    placement = Placement.for_package(package, device)
    api = api or api_client()
    existing = get(model, namespace, api=api)
    previous = _served_version(existing)
    canary = None
    if not approved and previous is not None and previous != version:
        canary = (
            canary_percent
            if canary_percent is not None
            else int(settings.canary_percent or DEFAULT_CANARY_PERCENT)
        )
    uri = package["targets"][placement.device]["uri"]
    manifest = inference_service(
        model,
        version,
        uri,
        namespace=namespace,
        placement=placement,
        canary_percent=canary,
        run_id=package.get("run_id"),
        payload_logger_url=settings.payload_logger_url,
    )
    applied = apply(manifest, api=api)
    name = manifest["metadata"]["name"]
    return Deployment(
        "kserve",
        name,
        namespace,
        model,
        version,
        previous,
        canary,
        placement.device,
        uri,
        _endpoint(model, name, namespace, applied),
    )


def promote(
    model: str, version: int, *, store: ObjectStore, namespace: str | None = None, api=None
) -> Deployment:
    """An approved version takes all the traffic (the canary percentage is dropped)."""
    return deploy_version(model, version, store=store, approved=True, namespace=namespace, api=api)


def revert(
    model: str, to_version: int, *, store: ObjectStore, namespace: str | None = None, api=None
) -> Deployment:
    """A rollback: the earlier version is applied again and takes all the traffic."""
    return deploy_version(model, to_version, store=store, approved=True, namespace=namespace, api=api)


def withdraw(model: str, *, namespace: str, api=None) -> bool:
    """A rollback to no version: the model's InferenceService is deleted (a Rejected version is never
    served again); False when there was none."""
    api = api or api_client()
    if get(model, namespace, api=api) is None:
        return False
    INFERENCE_SERVICES.delete(namespace, service_name(model), api=api)
    return True
