"""The operator scenarios against a real Kubernetes API server (`make kind-up`, then `make e2e`).

Marked `cluster`: skipped by default and whenever KUBECONFIG is not set. Unlike kmock, a real API
server applies the CRD's schema itself, so invalid TrainingRequests are refused at the door here.
Attempts run on the local runner inside the test process (ISSUEOPS_OPERATOR_LOCAL=1), so no
Kubeflow installation is needed; `make deploy` covers the in-cluster operator and KFP.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest
import yaml

from issueops.crd import GROUP, PLURAL, VERSION, training_request_crd

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(not os.environ.get("KUBECONFIG"), reason="needs a cluster: set KUBECONFIG"),
]

OPERATOR = str(Path(__file__).resolve().parent.parent / "operator" / "issueops_operator.py")
EXAMPLES = Path(__file__).resolve().parent.parent / "manifests" / "examples" / "trainingrequest.yaml"


@pytest.fixture(scope="module")
def kube():
    from kubernetes import client, config

    config.load_kube_config(config_file=os.environ["KUBECONFIG"])
    crd = training_request_crd()
    extensions = client.ApiextensionsV1Api()
    # Server-side apply: the API server itself accepts (or refuses) the generated schema.
    extensions.api_client.call_api(
        f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd['metadata']['name']}",
        "PATCH",
        query_params=[("fieldManager", "issueops-tests"), ("force", "true")],
        header_params={"Content-Type": "application/apply-patch+yaml"},
        body=crd,
        auth_settings=["BearerToken"],
        _preload_content=False,
    )
    for _ in range(60):
        status = extensions.read_custom_resource_definition(crd["metadata"]["name"]).status
        if any(c.type == "Established" and c.status == "True" for c in status.conditions or []):
            break
        time.sleep(1)
    namespace = f"issueops-test-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api()
    core.create_namespace({"metadata": {"name": namespace}})
    yield client.CustomObjectsApi(), namespace
    core.delete_namespace(namespace)


def body(name: str, spec: dict) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainingRequest",
        "metadata": {"name": name},
        "spec": spec,
    }


BASE = {
    "learning_type": "supervised",
    "algorithm": "random_forest",
    "dataset_id": "sklearn:breast_cancer",
    "hyperparameters": {"n_estimators": 1, "max_depth": 1},
    "evaluation_threshold": 0.99,
    "max_retry": 1,
}


def test_the_api_server_accepts_the_examples(kube):
    api, namespace = kube
    for example in yaml.safe_load_all(EXAMPLES.read_text()):
        example["metadata"] = {"name": example["metadata"]["name"] + "-ok"}
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, example, dry_run="All")


def test_the_api_server_accepts_the_rayjob_the_train_step_applies(kube):
    """With KubeRay installed, its CRD's schema takes the RayJob as ISSUEOPS_RL_RUNNER=rayjob
    applies it (server-side apply, dry run, strict field validation)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from issueops.kuberay import RAYJOBS, rayjob_manifest
    from issueops.spec import parse_issue_body

    try:
        client.ApiextensionsV1Api().read_custom_resource_definition("rayjobs.ray.io")
    except ApiException as exc:
        if exc.status == 404:
            pytest.skip("KubeRay is not installed in this cluster")
        raise
    api, namespace = kube
    spec = parse_issue_body(
        "learning_type: reinforcement\nalgorithm: ppo\nenvironment: CartPole-v1\n"
        "hyperparameters: {training_iterations: 1}\n"
    )
    manifest = rayjob_manifest(spec, "train-20260101-000000-e2e1", namespace=namespace)
    api.api_client.call_api(
        f"/apis/{RAYJOBS.api_version}/namespaces/{namespace}/{RAYJOBS.plural}/{manifest['metadata']['name']}",
        "PATCH",
        query_params=[
            ("fieldManager", "issueops"),
            ("force", "true"),
            ("dryRun", "All"),
            ("fieldValidation", "Strict"),
        ],
        header_params={"Content-Type": "application/apply-patch+yaml"},
        body=manifest,
        auth_settings=["BearerToken"],
        _preload_content=False,
    )


@pytest.mark.parametrize(
    "change",
    [
        {"hyperparameters": {"learning_rate": 0.1}},  # not a random_forest hyperparameter
        {"hyperparameters": {"n_estimators": 0}},
        {"evaluation_threshold": 1.5},  # accuracy is at most 1
        {"max_retry": 11},
        {"evaluation_metric": "rmse"},  # a regression metric on a classification task
        {"learning_type": "unsupervised"},
        {"test_size": 0.5, "validation_size": 0.45},  # the CEL rule
        {"algorithm": "svm"},
    ],
)
def test_the_api_server_refuses_a_training_request_that_violates_the_schema(kube, change):
    from kubernetes.client.exceptions import ApiException

    api, namespace = kube
    with pytest.raises(ApiException) as refused:
        api.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, body("bad", {**BASE, **change}), field_validation="Strict"
        )
    assert refused.value.status == 422


def test_operator_runs_a_request_to_the_question_and_takes_operator_input(kube, home, monkeypatch):
    import kopf
    from kopf.testing import KopfRunner

    api, namespace = kube
    monkeypatch.setenv("ISSUEOPS_OPERATOR_LOCAL", "1")
    monkeypatch.setenv("ISSUEOPS_OPERATOR_INTERVAL", "1")

    def get(name):
        return api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)

    def wait(name, check, timeout=300):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = get(name)
            if check(found.get("status") or {}):
                return found
            time.sleep(1)
        raise AssertionError(f"{name}: {get(name).get('status')}")

    args = ["run", "--standalone", f"--namespace={namespace}", OPERATOR]
    with KopfRunner(args, registry=kopf.OperatorRegistry(), timeout=60) as runner:
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body("loop", BASE))
        found = wait("loop", lambda s: s.get("phase") == "WaitingForOperator")
        assert found["status"]["attempt"] == 1 and found["status"]["runId"]
        patch = [
            {
                "op": "add",
                "path": "/spec/operatorInput",
                "value": {"id": "1", "action": "retrain", "adjusted_hyperparameters": {"n_estimators": 2}},
            }
        ]
        api.api_client.call_api(
            f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/loop",
            "PATCH",
            header_params={"Content-Type": "application/json-patch+json"},
            body=patch,
            auth_settings=["BearerToken"],
        )
        done = wait("loop", lambda s: s.get("phase") in ("RolledBack", "Failed", "Succeeded"))
        assert done["status"]["phase"] == "RolledBack" and done["status"]["attempt"] == 2

        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body("gone", BASE))
        wait("gone", lambda s: bool(s.get("runHandle")))
        api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "gone")
        deadline = time.monotonic() + 60
        from kubernetes.client.exceptions import ApiException

        while time.monotonic() < deadline:
            try:
                get("gone")
            except ApiException as missing:
                assert missing.status == 404
                break
            time.sleep(1)
        else:
            raise AssertionError("the deleted request is still there (finalizer not released)")
    assert runner.exception is None
