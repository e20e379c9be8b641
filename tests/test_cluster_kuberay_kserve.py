"""KubeRay's and KServe's own CRDs (from their Go modules) on the real API server: the RayJob the
train step applies and the InferenceService the deploy step applies (canary, approval, rollback,
also through the promotion path every approve and rollback takes) are accepted with strict field validation and read back as written (the payload logger's wiring
too); manifests/kuberay and
manifests/kserve pass a server-side dry run. No KubeRay or KServe controller runs: the test
plays KubeRay's part by writing the RayJob's status, as its controller would."""

from __future__ import annotations

import threading

import pytest

from tests.cluster import (
    REPO,
    read_documents,
    server_side_apply,
    third_party_crds,
    wait_established,
    wait_until,
    written,
)

pytestmark = pytest.mark.cluster

CRDS = (
    "rayjobs.ray.io",
    "rayclusters.ray.io",
    "inferenceservices.serving.kserve.io",
    "servingruntimes.serving.kserve.io",
)


@pytest.fixture(scope="module")
def operators(kube, control_plane):
    """KubeRay's and KServe's config/crd, applied as their installers do (kustomize, server-side)."""
    for name in ("kuberay", "kserve"):
        control_plane.kubectl("apply", "--server-side", "-k", str(third_party_crds(name)))
    wait_established(kube, CRDS)
    server_side_apply(kube, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "issueops"}})
    return kube


class Strict:
    """The admin's ApiClient, with every PATCH (issueops' server-side applies) sent with
    fieldValidation=Strict: a field the CRD does not declare is an error, not a warning."""

    def __init__(self, api):
        self.api, self.applied = api, []

    def call_api(self, path, method, **kwargs):
        if method == "PATCH":
            kwargs["query_params"] = [*kwargs.get("query_params", []), ("fieldValidation", "Strict")]
            self.applied.append(kwargs["body"])
        return self.api.call_api(path, method, **kwargs)


def test_the_rayjob_the_train_step_applies_is_accepted_and_its_status_read_as_kuberay_writes_it(
    operators, namespace, s3_store, tmp_path
):
    from kubernetes import client

    from issueops.errors import ExternalServiceError
    from issueops.pipeline.rayjob import RAYJOBS, rayjob_manifest, rayjob_name, train_on_rayjob
    from issueops.spec.body import parse_issue_body

    spec = parse_issue_body(
        "learning_type: reinforcement\nalgorithm: ppo\nenvironment: CartPole-v1\n"
        "hyperparameters: {training_iterations: 1}\n"
    )
    run_id = "train-20260101-000000-e2e1"
    api = Strict(operators)
    outcome: dict[str, BaseException] = {}

    def train():
        try:
            train_on_rayjob(spec, run_id, s3_store, tmp_path / "m", api=api, namespace=namespace, poll_s=0.1)
        except BaseException as error:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = error

    step = threading.Thread(target=train, daemon=True)
    step.start()
    name = rayjob_name(run_id)
    stored = wait_until(lambda: RAYJOBS.get(namespace, name, api=operators), 60, "the RayJob")
    manifest = rayjob_manifest(spec, run_id, namespace=namespace)
    assert api.applied == [manifest]
    assert written(manifest, stored) == []
    # What KubeRay's controller writes when the job runs past activeDeadlineSeconds.
    client.CustomObjectsApi(operators).patch_namespaced_custom_object_status(
        "ray.io",
        "v1",
        namespace,
        "rayjobs",
        name,
        {"status": {"jobDeploymentStatus": "Failed", "jobStatus": "", "reason": "DeadlineExceeded"}},
    )
    step.join(60)
    assert isinstance(outcome.get("error"), ExternalServiceError)
    assert str(outcome["error"]) == f"RayJob {namespace}/{name} ended Failed: DeadlineExceeded."


def test_the_inference_service_the_deploy_step_applies_through_canary_approval_and_rollback(
    operators, namespace, store
):
    from issueops.serving.kserve import deploy_version, get, promote, revert
    from tests.test_kserve import packaged

    packaged(store, "bc-rf", 1, 2)
    api = Strict(operators)

    def served() -> dict:
        stored = get("bc-rf", namespace, api=operators)
        assert written(api.applied[-1], stored) == []
        return stored

    first = deploy_version("bc-rf", 1, store=store, approved=False, namespace=namespace, api=api)
    assert first.canary_percent is None and "canaryTrafficPercent" not in served()["spec"]["predictor"]

    canary = deploy_version("bc-rf", 2, store=store, approved=False, namespace=namespace, api=api)
    predictor = served()["spec"]["predictor"]
    assert (canary.canary_percent, canary.previous_version) == (10, 1)
    assert predictor["canaryTrafficPercent"] == 10
    assert predictor["model"]["storageUri"] == "s3://issueops/triton/bc-rf/2/cpu"

    promote("bc-rf", 2, store=store, namespace=namespace, api=api)  # /approve
    assert "canaryTrafficPercent" not in served()["spec"]["predictor"]  # the apply dropped it

    back = revert("bc-rf", 1, store=store, namespace=namespace, api=api)  # /rollback
    stored = served()
    assert back.previous_version == 2 and stored["metadata"]["annotations"]["issueops.io/version"] == "1"
    assert stored["spec"]["predictor"]["model"]["storageUri"].endswith("/bc-rf/1/cpu")
    assert len(api.applied) == 4


def test_approve_and_rollback_move_the_inference_service_on_the_api_server(
    operators, namespace, store, tmp_path, monkeypatch
):
    """The one promotion path every door takes (issueops.registry.promotion) with
    ISSUEOPS_SERVING=kserve: the canary the deploy step applied is promoted on approve and
    reverted on rollback, as KServe's CRD stores them, with one audit record per move."""
    from issueops.config import Settings
    from issueops.registry.promotion import Production
    from issueops.serving.kserve import VERSION_ANNOTATION, deploy_version, get
    from tests.test_kserve import packaged, two_versions

    monkeypatch.setenv("ISSUEOPS_SERVING", "kserve")
    monkeypatch.setenv("ISSUEOPS_NAMESPACE", namespace)
    registry = two_versions(tmp_path, "bc-rf")
    packaged(store, "bc-rf", 1, 2)
    api = Strict(operators)
    for version, approved in ((1, True), (2, False)):
        deploy_version("bc-rf", version, store=store, approved=approved, namespace=namespace, api=api)
    production = Production(Settings.from_env(), registry=registry, store=store, api=api)

    def served() -> tuple[str, int | None]:
        stored = get("bc-rf", namespace, api=operators)
        assert written(api.applied[-1], stored) == []
        predictor = stored["spec"]["predictor"]
        return stored["metadata"]["annotations"][VERSION_ANNOTATION], predictor.get("canaryTrafficPercent")

    assert served() == ("2", 10)
    approved = production.promote("bc-rf", 2, actor="carol", reason="looks good")
    assert approved.version.in_production and served() == ("2", None)
    rolled = production.roll_back("bc-rf", actor="carol", reason="drift")
    assert rolled.to_version == 1 and served() == ("1", None)
    moves = [r for r in registry.history("bc-rf") if r.action in ("promote", "rollback")][1:]
    assert [(r.action, r.from_version, r.to_version) for r in moves] == [
        ("promote", 1, 2),
        ("rollback", 2, 1),
    ]
    assert all(
        f"InferenceService {namespace}/bc-rf serves version {r.to_version}" in r.endpoint for r in moves
    )


def test_the_payload_logger_url_becomes_the_inference_services_logger_kserve_accepts(
    operators, namespace, store, monkeypatch
):
    """ISSUEOPS_PAYLOAD_LOGGER_URL (issueops-config, manifests/monitoring) is where the deploy step
    points KServe's payload logger: KServe's own CRD takes the logger strictly, as written."""
    from issueops.serving.kserve import VERSION_ANNOTATION, deploy_version, get
    from tests.test_kserve import packaged

    receiver = "http://issueops-monitor.issueops.svc.cluster.local/events"
    monkeypatch.setenv("ISSUEOPS_PAYLOAD_LOGGER_URL", receiver)
    packaged(store, "bc-rf", 1)
    api = Strict(operators)
    deploy_version("bc-rf", 1, store=store, approved=True, namespace=namespace, api=api)
    stored = get("bc-rf", namespace, api=operators)
    assert written(api.applied[-1], stored) == []
    assert stored["spec"]["predictor"]["logger"] == {
        "mode": "all",
        "url": receiver,
        "metadataAnnotations": [VERSION_ANNOTATION],
    }


def test_a_field_kserve_does_not_declare_is_refused_for_good(operators, namespace):
    """The API server answers an undeclared field in a server-side apply with a 500; issueops
    names it as the invalid manifest it is (not a transient error to retry)."""
    from issueops.errors import InvalidInput
    from issueops.serving.kserve import INFERENCE_SERVICES, inference_service

    manifest = inference_service("bc-rf", 1, "s3://issueops/triton/bc-rf/1/cpu", namespace=namespace)
    manifest["spec"]["predictor"]["model"]["storageURI"] = "s3://typo"
    with pytest.raises(InvalidInput) as refused:
        INFERENCE_SERVICES.apply(manifest, api=operators)
    assert ".spec.predictor.model.storageURI: field not declared in schema" in str(refused.value)
    assert INFERENCE_SERVICES.get(namespace, "bc-rf", api=operators) is None


@pytest.mark.parametrize("directory", ["kuberay", "kserve"])
def test_the_kuberay_and_kserve_manifests_pass_a_server_dry_run(operators, control_plane, directory):
    dry = control_plane.kubectl(
        "apply", "--server-side", "--dry-run=server", "-k", str(REPO / "manifests" / directory)
    )
    lines = dry.stdout.splitlines()
    assert lines and all(line.endswith("serverside-applied (server dry run)") for line in lines), dry.stdout


@pytest.mark.parametrize(
    "path",
    [
        *sorted((REPO / "manifests" / "kserve" / "examples").glob("*.yaml")),
        REPO / "manifests" / "kuberay" / "rayjob.yaml",
    ],
    ids=lambda p: p.name,
)
def test_the_example_resources_are_accepted_strictly(operators, path):
    for manifest in read_documents(path):
        stored = server_side_apply(operators, manifest, dry_run=True)
        assert written(manifest, stored) == []
