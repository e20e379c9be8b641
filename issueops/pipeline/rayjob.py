"""A KubeRay RayJob for one reinforcement learning run, generated from its spec.

KubeRay creates a Ray cluster (one head, one worker pod per RLlib env runner), runs
`python -m issueops.pipeline.rayjob_entrypoint` on the head (the same prepare and train steps as
the local pipeline, recording into the object store), and deletes the cluster when the job ends.
manifests/kuberay/rayjob.yaml is this module's output for examples/ppo.yaml, commented field by
field; a test keeps the two the same.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import yaml

from issueops import custom_resources
from issueops.config import DEFAULT_COMPONENT_IMAGE, Settings, utcnow
from issueops.custom_resources import CustomResource
from issueops.errors import ExternalServiceError, InvalidInput, IssueOpsError, recorded_error
from issueops.pipeline.policy import STEP_POLICIES
from issueops.spec.body import TrainingSpec
from issueops.spec.catalog import resolved_hyperparameters
from issueops.store import ObjectStore

log = logging.getLogger("issueops.pipeline.rayjob")

RAY_VERSION = "2.60.0"  # the ray[rllib] pinned in pyproject.toml; the image must carry the same
DEFAULT_IMAGE = DEFAULT_COMPONENT_IMAGE  # a RayJob runs the same image as the pipeline steps
NAMESPACE = "issueops"
ENTRYPOINT = "python -m issueops.pipeline.rayjob_entrypoint"
# Kubernetes quantities per pod. Ray wants requests equal to limits so its CPU count is honest.
HEAD_RESOURCES = {"cpu": "2", "memory": "4Gi"}
WORKER_RESOURCES = {"cpu": "1", "memory": "2Gi"}
SUBMITTER_RESOURCES = {
    "requests": {"cpu": "100m", "memory": "256Mi"},
    "limits": {"cpu": "500m", "memory": "512Mi"},
}
FINISHED_TTL_S = 600


def rayjob_name(run_id: str) -> str:
    """A DNS-1123 name from the run id; KubeRay appends suffixes, so it stays under 48 characters."""
    name = re.sub(r"[^a-z0-9-]+", "-", run_id.lower()).strip("-")[:47].rstrip("-")
    if not name:
        raise InvalidInput(f"run id {run_id!r} gives no usable Kubernetes name.")
    return name


def rayjob_manifest(
    spec: TrainingSpec,
    run_id: str,
    *,
    image: str | None = None,
    namespace: str = NAMESPACE,
) -> dict[str, Any]:
    """The RayJob for `spec`'s run `run_id`, as a dict ready for the Kubernetes API or YAML."""
    if spec.learning_type != "reinforcement":
        raise InvalidInput(f"a RayJob runs reinforcement learning; this spec is {spec.learning_type}.")
    image = image or Settings.from_env().ray_image
    params = resolved_hyperparameters(spec.algo, spec.hyperparameters)
    runners = int(params["num_env_runners"])
    train = STEP_POLICIES["train"]
    name = rayjob_name(run_id)
    labels = {
        "app.kubernetes.io/name": "issueops-rl",
        "app.kubernetes.io/part-of": "issueops",
        "issueops.dev/run-id": name,
        "issueops.dev/algorithm": spec.algorithm,
    }
    runtime_env = {
        "env_vars": {
            "ISSUEOPS_RUN_ID": run_id,
            "ISSUEOPS_SPEC_JSON": spec.to_json(),
            "ISSUEOPS_RAY_ADDRESS": "auto",
            "ISSUEOPS_RL_RUNNER": "local",  # the job trains here, whatever the shared config says
            "RAY_USAGE_STATS_ENABLED": "0",
        }
    }
    cluster: dict[str, Any] = {
        "rayVersion": RAY_VERSION,
        "headGroupSpec": {
            "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
            "template": {
                "metadata": {"labels": labels},
                "spec": _pod_spec(
                    "ray-head",
                    image,
                    HEAD_RESOURCES,
                    ports=[
                        {"containerPort": 6379, "name": "gcs-server"},
                        {"containerPort": 8265, "name": "dashboard"},
                        {"containerPort": 10001, "name": "client"},
                    ],
                    store_access=True,
                ),
            },
        },
    }
    if runners:
        cluster["workerGroupSpecs"] = [
            {
                "groupName": "env-runners",
                "replicas": runners,
                "minReplicas": runners,
                "maxReplicas": runners,
                "rayStartParams": {"num-cpus": WORKER_RESOURCES["cpu"]},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": _pod_spec("ray-worker", image, WORKER_RESOURCES, store_access=False),
                },
            }
        ]
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "entrypoint": ENTRYPOINT,
            "runtimeEnvYAML": yaml.safe_dump(runtime_env, sort_keys=True, width=float("inf")),
            "submissionMode": "K8sJobMode",
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": FINISHED_TTL_S,
            "activeDeadlineSeconds": train.timeout_s,
            "backoffLimit": train.retries,
            "submitterPodTemplate": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "securityContext": _POD_SECURITY,
                    "containers": [
                        {
                            "name": "ray-job-submitter",
                            "image": image,
                            "resources": SUBMITTER_RESOURCES,
                            "securityContext": _CONTAINER_SECURITY,
                        }
                    ],
                },
            },
            "rayClusterSpec": cluster,
        },
    }


_POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "runAsGroup": 100,
    "fsGroup": 100,
    "seccompProfile": {"type": "RuntimeDefault"},
}
_CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def _pod_spec(
    container: str,
    image: str,
    resources: dict[str, str],
    *,
    ports: list[dict[str, Any]] | None = None,
    store_access: bool,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "securityContext": _POD_SECURITY,
        "containers": [
            {
                "name": container,
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "resources": {"requests": dict(resources), "limits": dict(resources)},
                "securityContext": _CONTAINER_SECURITY,
                "volumeMounts": [{"name": "shared-memory", "mountPath": "/dev/shm"}],
            }
        ],
        "volumes": [{"name": "shared-memory", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}}],
    }
    main = spec["containers"][0]
    if ports:
        main["ports"] = ports
    if container == "ray-worker":
        main["lifecycle"] = {"preStop": {"exec": {"command": ["/bin/sh", "-c", "ray stop"]}}}
    if store_access:
        main["envFrom"] = [{"configMapRef": {"name": "issueops-config"}}]
        main["env"] = [
            _secret_env("AWS_ACCESS_KEY_ID", "issueops-s3", "access-key-id"),
            _secret_env("AWS_SECRET_ACCESS_KEY", "issueops-s3", "secret-access-key"),
        ]
    return spec


def _secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": True}}}


class _ManifestDumper(yaml.SafeDumper):
    """Block scalars for multi-line strings (runtimeEnvYAML), and never &anchors / *aliases."""

    def ignore_aliases(self, data: Any) -> bool:  # noqa: ARG002 - PyYAML's signature
        return True


def _represent_text(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_ManifestDumper.add_representer(str, _represent_text)


def render_rayjob(spec: TrainingSpec, run_id: str, **options: Any) -> str:
    """The RayJob as YAML for `kubectl apply -f -`."""
    manifest = rayjob_manifest(spec, run_id, **options)
    return yaml.dump(manifest, Dumper=_ManifestDumper, sort_keys=False, width=120)


def spec_of(manifest: dict[str, Any]) -> TrainingSpec:
    """The training spec a RayJob carries (the inverse of rayjob_manifest, for checks and tests)."""
    env = yaml.safe_load(manifest["spec"]["runtimeEnvYAML"])["env_vars"]
    return TrainingSpec(**json.loads(env["ISSUEOPS_SPEC_JSON"]))


RAYJOBS = CustomResource("ray.io", "v1", "rayjobs", "RayJob", "KubeRay")
FINISHED = ("Complete", "Failed")  # status.jobDeploymentStatus once KubeRay is done with the job
FINISH_GRACE_S = 300  # past activeDeadlineSeconds, for KubeRay to mark the job and tear it down
POLL_S = 5.0


def train_on_rayjob(
    spec: TrainingSpec,
    run_id: str,
    store: ObjectStore,
    model_dir: Path,
    *,
    api=None,
    namespace: str | None = None,
    poll_s: float | None = None,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """Train on the cluster: apply the run's RayJob, wait until KubeRay says it ended, and copy the
    model it uploaded (models/<run_id>) into `model_dir`. Returns the model's manifest.

    A RayJob of this run left over from an earlier, finished attempt (a retried task) is deleted
    first, since applying it again would not start it again. A failed job raises the error its
    steps recorded in the run (the real reason, not just "the job failed"). A job still running
    after `timeout_s` (default: its activeDeadlineSeconds and 5 minutes) is deleted.
    """
    from issueops.pipeline.runs import RunRecord
    from issueops.store import LocalStore, download_dir
    from issueops.training.train import MANIFEST

    if isinstance(store, LocalStore):
        raise InvalidInput(
            "ISSUEOPS_RL_RUNNER=rayjob needs the object store in S3 (ISSUEOPS_S3_BUCKET): "
            "the job's pods upload the model there."
        )
    namespace = namespace or Settings.from_env().namespace
    api = api or custom_resources.api_client("ISSUEOPS_RL_RUNNER=rayjob")
    manifest = rayjob_manifest(spec, run_id, namespace=namespace)
    name = manifest["metadata"]["name"]
    where = f"RayJob {namespace}/{name}"
    wait_s = (
        timeout_s if timeout_s is not None else manifest["spec"]["activeDeadlineSeconds"] + FINISH_GRACE_S
    )
    poll_s = POLL_S if poll_s is None else poll_s
    record = RunRecord(store, run_id)

    earlier = RAYJOBS.get(namespace, name, api=api)
    if earlier is not None and _deployment_status(earlier) in FINISHED:
        RAYJOBS.delete(namespace, name, api=api)
        _wait(lambda: RAYJOBS.get(namespace, name, api=api) is None, wait_s, poll_s, f"{where} to be deleted")
    started = utcnow().isoformat()
    RAYJOBS.apply(manifest, api=api)
    log.info("applied %s; waiting for it to finish", where)

    def final_status() -> dict[str, Any] | None:
        job = RAYJOBS.get(namespace, name, api=api)
        if job is None:
            raise ExternalServiceError(f"{where} was deleted before it finished.")
        return (job.get("status") or {}) if _deployment_status(job) in FINISHED else None

    try:
        status = _wait(final_status, wait_s, poll_s, f"{where} to finish")
    except TimeoutError as exc:
        RAYJOBS.delete(namespace, name, api=api)
        raise ExternalServiceError(f"{exc}; it was deleted.") from None
    if status.get("jobStatus") != "SUCCEEDED":
        failure = record.error()
        if failure and failure.get("time", "") >= started:  # the job's own steps said why
            raise recorded_error(failure.get("lineage") or [failure["kind"]], failure["problems"])
        reason = " ".join(str(status.get(k)) for k in ("reason", "message") if status.get(k))
        raise ExternalServiceError(
            f"{where} ended {status.get('jobStatus') or status.get('jobDeploymentStatus')}"
            f"{': ' + reason[:300] if reason else ''}."
        )
    model_dir = download_dir(store, f"models/{run_id}", model_dir)
    if not (model_dir / MANIFEST).is_file():
        raise ExternalServiceError(f"{where} succeeded but no model was uploaded to models/{run_id}.")
    return json.loads((model_dir / MANIFEST).read_text())


def _deployment_status(job: dict[str, Any]) -> str | None:
    return (job.get("status") or {}).get("jobDeploymentStatus")


def _wait(check, limit_s: float, poll_s: float, what: str):
    """check()'s first truthy answer, asked every poll_s; TimeoutError after limit_s."""
    deadline = time.monotonic() + limit_s
    while not (answer := check()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"Waited {limit_s:.0f} s for {what}")
        time.sleep(poll_s)
    return answer


def main(argv: list[str] | None = None) -> int:
    """`python -m issueops.pipeline.rayjob SPEC_FILE [--run-id ID]`: print the RayJob for a spec file."""
    import argparse
    import sys

    from issueops.pipeline.runs import new_run_id
    from issueops.spec.body import parse_issue_body

    parser = argparse.ArgumentParser(prog="python -m issueops.pipeline.rayjob", description=main.__doc__)
    parser.add_argument("file", help="issue body: YAML, JSON or markdown with a ```yaml block")
    parser.add_argument("--run-id", default=None, help="default: a new run id")
    parser.add_argument("--image", default=None, help=f"default: $ISSUEOPS_RAY_IMAGE or {DEFAULT_IMAGE}")
    parser.add_argument("--namespace", default=NAMESPACE)
    args = parser.parse_args(argv)
    try:
        spec = parse_issue_body(Path(args.file).read_text(encoding="utf-8"))
        print(render_rayjob(spec, args.run_id or new_run_id(), image=args.image, namespace=args.namespace))
    except (IssueOpsError, OSError) as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
