"""InferenceService manifests and their rollout by server-side apply.

Validation: core kinds (ServiceAccount, Role, RoleBinding) with kubernetes-validate against the
Kubernetes 1.37 OpenAPI schemas, strict. The kserve package ships no CRD openAPIV3Schema, so the
InferenceService and ServingRuntime are checked structurally against the OpenAPI models it does
ship (kserve/models, read from source, and kubernetes.client.models for embedded core types): every field name
known at its place, every value of the declared type.

No API server can run here, so the rollout talks to a small double of one that speaks the
documented server-side-apply wire format (PATCH, application/apply-patch+yaml, fieldManager,
force) with the semantics that matter for one field manager: the object becomes what was applied.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import importlib.util
import json
import re
from functools import cache
from pathlib import Path

import pytest
import yaml

from issueops.errors import InvalidInput, NotFound, Unauthorized, Unavailable
from issueops.serving.kserve import (
    Placement,
    deploy_version,
    inference_service,
    promote,
    revert,
    service_name,
)
from tests.conftest import REPO
from tests.kube_double import ApiServerDouble

KSERVE_DIR = REPO / "manifests" / "kserve"
URI = "s3://issueops/triton/breast-cancer-random-forest/{v}/{t}"


@cache
def kserve_models() -> dict[str, tuple[dict, dict]]:
    """openapi_types and attribute_map of every model class kserve ships, read from its source.

    Importing kserve registers its copy of the V2 gRPC protocol, which clashes with tritonclient's
    in one process (test_serving imports tritonclient.grpc), so the dicts are read with ast.
    """
    spec = importlib.util.find_spec("kserve")
    found = {}
    for path in (Path(spec.submodule_search_locations[0]) / "models").glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef):
                values = {
                    target.id: ast.literal_eval(item.value)
                    for item in node.body
                    if isinstance(item, ast.Assign)
                    for target in item.targets
                    if isinstance(target, ast.Name) and target.id in ("openapi_types", "attribute_map")
                }
                if len(values) == 2:
                    found[node.name] = (values["openapi_types"], values["attribute_map"])
    return found


def structural_problems(data, type_name: str, path: str = "") -> list[str]:
    """Every field unknown to kserve's / kubernetes' generated models, or of the wrong type."""
    import kubernetes.client.models

    if type_name == "object":
        return []
    if type_name in ("str", "int", "bool", "float"):
        kinds = {"str": str, "int": int, "bool": bool, "float": (int, float)}[type_name]
        ok = isinstance(data, kinds) and not (type_name == "int" and isinstance(data, bool))
        return [] if ok else [f"{path}: {data!r} is not {type_name}"]
    if match := re.fullmatch(r"list\[(.+)\]", type_name):
        if not isinstance(data, list):
            return [f"{path}: not a list"]
        return [p for i, item in enumerate(data) for p in structural_problems(item, match[1], f"{path}[{i}]")]
    if match := re.fullmatch(r"dict\((\w+), (.+)\)", type_name):
        if not isinstance(data, dict):
            return [f"{path}: not a mapping"]
        return [p for k, v in data.items() for p in structural_problems(v, match[2], f"{path}.{k}")]
    if type_name in kserve_models():
        types, names = kserve_models()[type_name]
    elif (model := getattr(kubernetes.client.models, type_name, None)) is not None:
        types, names = model.openapi_types, model.attribute_map
    else:
        return []  # a type neither package describes: nothing to check against
    if not isinstance(data, dict):
        return [f"{path}: not an object ({type_name})"]
    fields = {json_name: attr for attr, json_name in names.items()}
    problems = []
    for key, value in data.items():
        if key not in fields:
            problems.append(f"{path}.{key}: not a field of {type_name}")
        else:
            problems += structural_problems(value, types[fields[key]], f"{path}.{key}")
    return problems


def check_inference_service(manifest: dict) -> None:
    assert structural_problems(manifest, "V1beta1InferenceService", "InferenceService") == []
    assert manifest["apiVersion"] == "serving.kserve.io/v1beta1" and manifest["kind"] == "InferenceService"
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", manifest["metadata"]["name"])
    model = manifest["spec"]["predictor"]["model"]
    assert model["runtime"] == "issueops-triton" and model["protocolVersion"] == "v2"
    assert model["resources"]["requests"] and model["resources"]["limits"]


def test_structural_check_catches_misplaced_and_mistyped_fields():
    manifest = inference_service("m", 1, URI.format(v=1, t="cpu"))
    broken = copy.deepcopy(manifest)
    broken["spec"]["predictor"]["canaryTrafficPercentage"] = 10
    broken["spec"]["predictor"]["minReplicas"] = "1"
    broken["spec"]["predictor"]["model"]["storageURI"] = "s3://x"
    problems = structural_problems(broken, "V1beta1InferenceService")
    assert len(problems) == 3 and any("canaryTrafficPercentage" in p for p in problems)


@pytest.mark.parametrize(
    "placement, canary",
    [
        (Placement(), None),
        (Placement(), 25),
        (Placement("gpu"), None),
        (Placement("gpu", True, "NVIDIA-A10G"), 10),
    ],
    ids=["cpu", "cpu-canary", "gpu-onnx", "gpu-plan-canary"],
)
def test_inference_service_per_placement(placement, canary):
    target = "gpu" if placement.device == "gpu" else "cpu"
    manifest = inference_service(
        "Breast_Cancer RF", 4, URI.format(v=4, t=target), placement=placement, canary_percent=canary
    )
    check_inference_service(manifest)
    predictor = manifest["spec"]["predictor"]
    assert manifest["metadata"]["name"] == "breast-cancer-rf"
    assert manifest["metadata"]["annotations"]["issueops.io/version"] == "4"
    assert predictor["model"]["storageUri"].endswith(f"/4/{target}")
    assert predictor.get("canaryTrafficPercent") == canary
    limits = predictor["model"]["resources"]["limits"]
    if placement.device == "cpu":
        assert (
            "nvidia.com/gpu" not in limits
            and "nodeSelector" not in predictor
            and "tolerations" not in predictor
        )
    else:
        assert limits["nvidia.com/gpu"] == "1"
        assert predictor["tolerations"] == [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]
        expected = (
            {"nvidia.com/gpu.product": "NVIDIA-A10G"}
            if placement.plan
            else {"nvidia.com/gpu.present": "true"}
        )
        assert predictor["nodeSelector"] == expected


def test_bad_manifest_inputs_are_refused():
    with pytest.raises(InvalidInput, match="not reachable from a cluster"):
        inference_service("m", 1, "/home/me/.issueops/store/triton/m/1/cpu")
    with pytest.raises(InvalidInput, match="percentage"):
        inference_service("m", 1, URI.format(v=1, t="cpu"), canary_percent=120)
    assert len(service_name("x" * 80)) <= 45 and service_name("9lives") == "m-9lives"


def test_examples_are_what_the_code_writes():
    examples = {p.name: yaml.safe_load(p.read_text()) for p in (KSERVE_DIR / "examples").glob("*.yaml")}
    assert examples["inferenceservice-cpu.yaml"] == inference_service(
        "breast-cancer-random-forest", 1, URI.format(v=1, t="cpu"), run_id="train-20261121-172359-79cf"
    )
    assert examples["inferenceservice-canary.yaml"] == inference_service(
        "breast-cancer-random-forest",
        2,
        URI.format(v=2, t="cpu"),
        canary_percent=10,
        run_id="train-20261122-090000-a1b2",
    )
    assert examples["inferenceservice-gpu-plan.yaml"] == inference_service(
        "wine-mlp",
        3,
        "s3://issueops/triton/wine-mlp/3/gpu",
        placement=Placement("gpu", True, "NVIDIA-H100-80GB-HBM3"),
        run_id="train-20261123-100000-c3d4",
    )
    for manifest in examples.values():
        check_inference_service(manifest)


def test_kserve_manifests_validate():
    import kubernetes_validate

    documents = [
        doc
        for path in sorted(KSERVE_DIR.glob("*.yaml"))
        if path.name != "kustomization.yaml"
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]
    kinds = sorted(d["kind"] for d in documents)
    assert kinds == ["Role", "RoleBinding", "ServiceAccount", "ServingRuntime"]
    for doc in documents:
        if doc["kind"] == "ServingRuntime":
            assert structural_problems(doc, "V1alpha1ServingRuntime", "ServingRuntime") == []
            container = doc["spec"]["containers"][0]
            assert re.search(r":\d+\.\d+-py3$", container["image"]), "the Triton image is pinned"
            assert container["resources"]["requests"] and container["resources"]["limits"]
        else:
            kubernetes_validate.validate(doc, "1.37.0", strict=True)
    kustomization = yaml.safe_load((KSERVE_DIR / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(
        p.name for p in KSERVE_DIR.glob("*.yaml") if p.name != "kustomization.yaml"
    )


def KServeDouble(**options) -> ApiServerDouble:
    """InferenceServices only; KServe's controller answers each with the service's URL."""

    def ready(key, service):
        service["status"] = {"url": f"http://{key[1]}.{key[0]}.example.com"}

    return ApiServerDouble({"inferenceservices": "serving.kserve.io/v1beta1"}, on_apply=ready, **options)


def packaged(store, model: str, *versions: int) -> None:
    """package.json as the package step writes it, with repositories in S3."""
    for version in versions:
        targets = {
            t: {"uri": f"s3://issueops/triton/{model}/{version}/{t}", "files": {}, "plan": False}
            for t in ("cpu", "gpu")
        }
        store.put_bytes(
            f"triton/{model}/{version}/package.json",
            json.dumps(
                {"model": model, "version": version, "run_id": f"run-{version}", "targets": targets}
            ).encode(),
        )


def test_canary_rollout_promotion_and_revert_by_server_side_apply(store):
    packaged(store, "bc-rf", 1, 2)
    with KServeDouble() as server:
        api = server.client()
        first = deploy_version("bc-rf", 1, store=store, approved=False, namespace="ml", api=api)
        assert first.canary_percent is None and first.previous_version is None  # nothing to canary against
        assert first.endpoint == "http://bc-rf.ml.example.com/v2/models/bc-rf"

        canary = deploy_version("bc-rf", 2, store=store, approved=False, namespace="ml", api=api)
        served = server.objects[("ml", "bc-rf")]
        assert (canary.canary_percent, canary.previous_version) == (10, 1)
        assert served["spec"]["predictor"]["canaryTrafficPercent"] == 10
        assert served["spec"]["predictor"]["model"]["storageUri"] == "s3://issueops/triton/bc-rf/2/cpu"

        promote("bc-rf", 2, store=store, namespace="ml", api=api)
        assert "canaryTrafficPercent" not in server.objects[("ml", "bc-rf")]["spec"]["predictor"]

        back = revert("bc-rf", 1, store=store, namespace="ml", api=api)
        served = server.objects[("ml", "bc-rf")]
        assert back.previous_version == 2 and served["metadata"]["annotations"]["issueops.io/version"] == "1"
        assert served["spec"]["predictor"]["model"]["storageUri"].endswith("/bc-rf/1/cpu")
        for manifest in server.objects.values():
            check_inference_service({k: v for k, v in manifest.items() if k != "status"})
    patches = [r for r in server.requests if r["method"] == "PATCH"]
    assert len(patches) == 4
    assert all(r["content_type"] == "application/apply-patch+yaml" for r in patches)
    assert all(r["query"] == {"fieldManager": "issueops", "force": "true"} for r in patches)


def test_gpu_deployment_uses_the_gpu_repository(store, monkeypatch):
    packaged(store, "wine-mlp", 1)
    monkeypatch.setenv("ISSUEOPS_SERVING_DEVICE", "gpu")
    with KServeDouble() as server:
        deployment = deploy_version(
            "wine-mlp", 1, store=store, approved=True, namespace="ml", api=server.client()
        )
        predictor = server.objects[("ml", "wine-mlp")]["spec"]["predictor"]
    assert deployment.device == "gpu" and deployment.storage_uri.endswith("/wine-mlp/1/gpu")
    assert predictor["nodeSelector"] == {"nvidia.com/gpu.present": "true"}


def test_api_refusals_become_clear_errors(store, monkeypatch, tmp_path):
    packaged(store, "bc-rf", 1)
    with KServeDouble(status=403) as server, pytest.raises(Unauthorized, match="denied by the double"):
        deploy_version("bc-rf", 1, store=store, approved=True, namespace="ml", api=server.client())
    with pytest.raises(NotFound, match="not packaged"):
        deploy_version("bc-rf", 7, store=store, approved=True, namespace="ml", api=object())
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(Unavailable, match="KUBECONFIG"):
        deploy_version("bc-rf", 1, store=store, approved=True, namespace="ml")


def test_the_example_runtime_serves_the_repository_layout():
    runtime = yaml.safe_load((KSERVE_DIR / "servingruntime-triton.yaml").read_text())
    args = runtime["spec"]["containers"][0]["args"]
    assert "--model-store=/mnt/models" in args and "--disable-auto-complete-config" in args
    assert {"v2", "grpc-v2"} <= set(runtime["spec"]["protocolVersions"])
    assert Path(KSERVE_DIR / "examples").is_dir()


# ---------------------------------------------------------------------- production moves the endpoint, at every door

NAMESPACE = "ml"


@pytest.fixture
def cluster(home, monkeypatch, tmp_path):
    with serving_on_kserve(monkeypatch, tmp_path) as server:
        yield server


@contextlib.contextmanager
def serving_on_kserve(monkeypatch, tmp_path):
    """ISSUEOPS_SERVING=kserve against the API double, reached the way a user's machine reaches a
    cluster: through KUBECONFIG."""
    with KServeDouble() as server:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {"name": "double", "cluster": {"server": server.client().configuration.host}}
                    ],
                    "users": [{"name": "tester", "user": {"token": "double"}}],
                    "contexts": [{"name": "double", "context": {"cluster": "double", "user": "tester"}}],
                    "current-context": "double",
                }
            )
        )
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        monkeypatch.setenv("ISSUEOPS_SERVING", "kserve")
        monkeypatch.setenv("ISSUEOPS_NAMESPACE", NAMESPACE)
        yield server


def canaried(store, tmp_path, model: str, server):
    """Version 1 of `model` in production and served; version 2 registered by run
    train-20260102-000000-bbbb, pending, packaged and served as a canary beside it (as the
    pipeline's deploy step leaves a version that waits for /approve)."""
    registry = two_versions(tmp_path, model)
    packaged(store, model, 1, 2)
    for version, approved in ((1, True), (2, False)):
        deploy_version(
            model, version, store=store, approved=approved, namespace=NAMESPACE, api=server.client()
        )
    assert served(server, model) == (2, 10)
    return registry


def two_versions(tmp_path, model: str):
    """Version 1 of `model` approved (production), version 2 pending, in the registry of ISSUEOPS_HOME."""
    from issueops.config import Settings
    from issueops.registry.lifecycle import Registry
    from issueops.results import RunResult

    registry = Registry.from_settings(Settings.from_env())
    model_dir = tmp_path / "model"
    model_dir.mkdir(exist_ok=True)
    (model_dir / "model.json").write_text("{}")
    for run_id, approve in (("train-20260101-000000-aaaa", True), ("train-20260102-000000-bbbb", False)):
        result = RunResult(
            run_id=run_id, spec={"model_name": model}, decision="pass", message="ok",
            evaluation_metric="accuracy", threshold=0.9, metric_value=0.95,
        )  # fmt: skip
        registry.register_version(
            model, result, registry.log_run(result, model_dir), model_dir, approve=approve, actor="test"
        )
    return registry


def served(server, model: str) -> tuple[int, int | None]:
    """The version the InferenceService names, and its canary percentage (None: all traffic)."""
    predictor = server.objects[(NAMESPACE, service_name(model))]
    version = int(predictor["metadata"]["annotations"]["issueops.io/version"])
    return version, predictor["spec"]["predictor"].get("canaryTrafficPercent")


def moves(registry, model: str) -> list:
    """The audit records of production's moves (one per approve or rollback)."""
    return [r for r in registry.history(model) if r.action in ("promote", "rollback")]


def assert_moved(registry, model: str, server, expected: list[tuple[str, int | None, int | None]]) -> None:
    """Production's moves after the setup's first promotion, one audit record each, every one
    naming what the InferenceService did."""
    later = moves(registry, model)[1:]
    assert [(r.action, r.from_version, r.to_version) for r in later] == expected
    for record in later:
        assert record.endpoint == (
            f"InferenceService {NAMESPACE}/{service_name(model)} serves version {record.to_version} with "
            f"all traffic (was version {record.from_version})"
        )


def test_cli_approve_and_rollback_move_the_inference_service(cluster, store, tmp_path, monkeypatch, capsys):
    import argparse

    from issueops.cli.registry import add_registry_parser, run_registry_command

    registry = canaried(store, tmp_path, "bc-cli", cluster)
    parser = argparse.ArgumentParser(prog="issueops")
    add_registry_parser(parser.add_subparsers(dest="command"))
    monkeypatch.setenv("ISSUEOPS_ACTOR", "carol")

    assert run_registry_command(parser.parse_args(["registry", "approve", "bc-cli", "2", "--json"])) == 0
    approved = json.loads(capsys.readouterr().out)
    assert approved["aliases"] == ["production"] and "serves version 2" in approved["endpoint"]
    assert served(cluster, "bc-cli") == (2, None)  # the canary took all the traffic

    assert run_registry_command(parser.parse_args(["registry", "rollback", "bc-cli"])) == 0
    assert "InferenceService ml/bc-cli serves version 1 with all traffic" in capsys.readouterr().out
    assert served(cluster, "bc-cli") == (1, None)
    assert_moved(registry, "bc-cli", cluster, [("promote", 1, 2), ("rollback", 2, 1)])


def test_issue_commands_through_the_bridge_move_the_inference_service(cluster, store, tmp_path, monkeypatch):
    from issueops.config import Settings
    from issueops.lifecycle.state_machine import Phase
    from tests.github_double import GitHubDouble
    from tests.test_bridge import SECRET, TOKEN, Hub, waiting_request

    registry = canaried(store, tmp_path, "bc-rf", cluster)
    with GitHubDouble(token=TOKEN) as gh:
        gh.add_user("alice", role="maintain")
        for name, value in {"GITHUB_TOKEN": TOKEN, "GITHUB_REPOSITORY": gh.full_name, "GITHUB_API_URL": gh.url,
                            "GITHUB_WEBHOOK_SECRET": SECRET}.items():  # fmt: skip
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("ISSUEOPS_ALLOWLIST", raising=False)
        hub = Hub(gh, Settings.from_env(), max_running=0)
        try:
            number = gh.create_issue("Train", body="spec", labels=["mlops:train"], user="alice")
            request = waiting_request(hub, number)
            request.phase, request.model_name, request.model_version = Phase.SUCCEEDED, "bc-rf", "2"
            hub.store.save(request)
            hub.deliver("issue_comment", hub.comment_event(number, "/approve", "alice"))
            hub.process()
            assert served(cluster, "bc-rf") == (2, None)
            assert "InferenceService ml/bc-rf serves version 2 with all traffic" in hub.bodies(number)[-1]

            hub.deliver("issue_comment", hub.comment_event(number, "/rollback", "alice"))
            hub.process()
            assert served(cluster, "bc-rf") == (1, None)
            assert "rolled back from version 2 to version 1" in hub.bodies(number)[-1]
        finally:
            hub.close()
    assert_moved(registry, "bc-rf", cluster, [("promote", 1, 2), ("rollback", 2, 1)])


def test_pipeline_promote_and_rollback_steps_move_the_inference_service(cluster, store, tmp_path):
    from issueops.pipeline.runs import RunRecord
    from issueops.pipeline.steps import promote_step, rollback_step

    registry = canaried(store, tmp_path, "bc-pipe", cluster)
    run_id = "train-20260102-000000-bbbb"  # the run that registered version 2
    record = RunRecord(store, run_id)
    record.write("request.json", {"spec": {"model_name": "bc-pipe"}})
    record.write("registration.json", {"model_name": "bc-pipe", "version": "2", "auto_approve": True})
    registration = promote_step(run_id)
    assert registration["alias"] == "production" and "serves version 2" in registration["endpoint"]
    assert served(cluster, "bc-pipe") == (2, None)

    record.write("judgement.json", {"decision": "fail", "message": "the request failed later"})
    rolled = rollback_step(run_id)  # a failed request: production as it was before it
    assert (rolled["changed"], rolled["to_version"], rolled["rejected"]) == (True, 1, [2])
    assert served(cluster, "bc-pipe") == (1, None)
    assert_moved(registry, "bc-pipe", cluster, [("promote", 1, 2), ("rollback", 2, 1)])


def test_a_refused_endpoint_leaves_the_registry_untouched(cluster, store, tmp_path):
    from issueops.config import Settings
    from issueops.registry.promotion import Production

    registry = canaried(store, tmp_path, "bc-403", cluster)
    before = registry.history("bc-403")
    cluster.forced_status = 403  # RBAC: the caller may not patch InferenceServices
    with pytest.raises(Unauthorized) as refused:
        Production(Settings.from_env(), store=store).promote("bc-403", 2, actor="carol")
    assert str(refused.value).endswith(
        "The endpoint did not move, so neither did the registry: version 1 of bc-403 stays in production. "
        "Run the same command again once the cause is fixed."
    )
    assert registry.production("bc-403").version == 1 and registry.history("bc-403") == before
    assert served(cluster, "bc-403") == (2, 10)

    cluster.forced_status = None  # fixed: the same command now moves both
    Production(Settings.from_env(), store=store).promote("bc-403", 2, actor="carol")
    assert registry.production("bc-403").version == 2 and served(cluster, "bc-403") == (2, None)
    assert_moved(registry, "bc-403", cluster, [("promote", 1, 2)])


def test_a_registry_failure_after_the_endpoint_moved_moves_it_back(cluster, store, tmp_path, monkeypatch):
    from issueops.config import Settings
    from issueops.errors import ExternalServiceError
    from issueops.registry.promotion import Production

    registry = canaried(store, tmp_path, "bc-mlflow", cluster)
    before = served(cluster, "bc-mlflow")

    def unreachable(*args, **kwargs):
        raise OSError("Connection refused")

    monkeypatch.setattr(registry.client, "set_registered_model_alias", unreachable)
    with pytest.raises(ExternalServiceError, match="Connection refused"):
        Production(Settings.from_env(), registry=registry, store=store).promote("bc-mlflow", 2, actor="carol")
    monkeypatch.undo()
    assert registry.production("bc-mlflow").version == 1
    assert served(cluster, "bc-mlflow")[0] == 1 != before[0]  # back on production's version, all traffic
