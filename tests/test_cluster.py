"""The TrainingRequest CRD as a real API server (tests/controlplane) takes it: applied server-side
and Established, the examples accepted, the same specs refused as `issueops validate` refuses,
the schema's own messages, printer columns, short names and the status subresource."""

from __future__ import annotations

import copy
import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from issueops.lifecycle.crd import GROUP, PLURAL, VERSION, training_request_crd
from issueops.spec.body import validate_spec
from tests.cluster import REPO, fast_spec, read_documents, server_side_apply, training_request

pytestmark = pytest.mark.cluster

EXAMPLES = REPO / "manifests" / "examples" / "trainingrequest.yaml"


def objects(kube):
    from kubernetes import client

    return client.CustomObjectsApi(kube)


def refusal(call) -> tuple[int, str]:
    """(HTTP status, the API server's message) of a refused call; (0, "") when it was accepted."""
    from kubernetes.client.exceptions import ApiException

    try:
        call()
    except ApiException as refused:
        return refused.status, json.loads(refused.body)["message"]
    return 0, ""


def test_the_crd_is_established_and_served_under_its_names(kube, control_plane):
    from kubernetes import client

    crd = client.ApiextensionsV1Api(kube).read_custom_resource_definition(f"{PLURAL}.{GROUP}")
    conditions = {c.type: c.status for c in crd.status.conditions}
    assert conditions["Established"] == "True" and conditions["NamesAccepted"] == "True"
    # NonStructuralSchema would be a condition here if the API server found the schema unusable.
    assert "NonStructuralSchema" not in conditions
    names = control_plane.kubectl("api-resources", f"--api-group={GROUP}", "--no-headers").stdout.split()
    assert names[:3] == [PLURAL, "treq,tr", f"{GROUP}/{VERSION}"]
    # What the committed file holds is what the catalog generates (tests/test_manifests.py), and
    # kubectl takes the file itself too.
    applied = control_plane.kubectl(
        "apply",
        "--server-side",
        "--dry-run=server",
        "-f",
        str(REPO / "manifests" / "crds" / "trainingrequests.yaml"),
    )
    assert "serverside-applied (server dry run)" in applied.stdout


def test_the_api_server_accepts_the_examples_and_stores_them_as_written(kube, namespace):
    examples = read_documents(EXAMPLES)
    assert len(examples) >= 2
    for example in examples:
        example["metadata"]["namespace"] = namespace
        stored = objects(kube).create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, example, field_validation="Strict"
        )
        assert stored["spec"] == example["spec"]
        validate_spec(copy.deepcopy(stored["spec"]))  # and issueops takes what was stored


def test_the_api_server_refuses_what_issueops_validate_refuses(kube, namespace):
    """Every spec of the catalog-built corpus (tests/test_manifests.py), as a dry-run create
    with strict field validation: the API server and validate_spec agree on each."""
    from issueops.lifecycle.crd import spec_schema
    from tests.test_manifests import corpus, pruned, python_accepts

    schema = spec_schema()
    # JSON has no infinity: the one case of the corpus no client can send.
    cases = [(name, doc) for name, doc in corpus() if name != "evaluation_threshold=inf"]

    def api_accepts(item: tuple[int, tuple[str, dict]]) -> tuple[str, dict, int, str]:
        index, (name, doc) = item
        status, message = refusal(
            lambda: objects(kube).create_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                training_request(f"case-{index}", doc),
                dry_run="All",
                field_validation="Strict",
            )
        )
        return name, doc, status, message

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(api_accepts, enumerate(cases)))
    disagreements, refused = [], 0
    for name, doc, status, message in answers:
        assert status in (0, 400, 422), (name, status, message)
        refused += status != 0
        # The API server drops a null in a field that is not nullable before validating, and the
        # operator then sees the field as absent; validate_spec is asked about that document.
        python = python_accepts(pruned(doc, schema))
        if python != (status == 0):
            disagreements.append(f"{name}: issueops {'accepts' if python else 'refuses'}, API {message}")
    assert disagreements == [], disagreements[:10]
    assert len(answers) > 2000 and refused >= 200 and len(answers) - refused >= 200


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"max_retry": 11},
            "spec.max_retry: Invalid value: 11: spec.max_retry in body should be less than or equal to 10",
        ),
        ({"algorithm": "svm"}, 'spec.algorithm: Unsupported value: "svm"'),
        (
            {"test_size": 0.5, "validation_size": 0.45},
            "test_size + validation_size must leave at least 10% of rows for training.",
        ),
        ({"hyperparameters": {"n_estimators": 0}}, "spec.hyperparameters.n_estimators: Invalid value: 0"),
        ({"surprise": 1}, ".spec.surprise: field not declared in schema"),
    ],
)
def test_an_invalid_training_request_is_refused_with_the_schemas_message(
    kube, control_plane, namespace, tmp_path, change, message
):
    """What a user of `kubectl apply` sees: the request is not created and the API server says why."""
    manifest = training_request("bad", fast_spec(**change), namespace=namespace)
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps(manifest))
    refused = control_plane.kubectl("apply", "--server-side", "-f", str(path), check=False)
    assert refused.returncode != 0
    assert message in refused.stderr, refused.stderr
    missing = control_plane.kubectl("get", "treq", "bad", "-n", namespace, check=False)
    assert "NotFound" in missing.stderr


def test_printer_columns_short_names_and_the_status_subresource(kube, control_plane, namespace):
    api = objects(kube)
    api.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        training_request("shown", fast_spec(issue={"repository": "octo/models", "number": 7})),
    )
    # A write of the main resource cannot set the status (the status subresource is on) ...
    api.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "shown", {"status": {"phase": "Succeeded"}}
    )
    assert "status" not in api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "shown")
    # ... a write of /status can, and cannot change the spec.
    api.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        "shown",
        {
            "spec": {"max_retry": 0},
            "status": {
                "phase": "Succeeded",
                "attempt": 2,
                "metricValue": 0.95,
                "modelVersion": "3",
                "runId": "train-1",
            },
        },
    )
    stored = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "shown")
    assert stored["spec"]["max_retry"] == 1 and stored["status"]["phase"] == "Succeeded"
    # An unknown status field is pruned by the schema, not stored.
    api.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, "shown", {"status": {"bogus": 1}}
    )
    assert (
        "bogus" not in api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "shown")["status"]
    )

    table = control_plane.kubectl("get", "tr", "shown", "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "ATTEMPT", "ALGORITHM", "VALUE", "MODEL", "ISSUE", "AGE"]
    assert table[1].split()[:7] == ["shown", "Succeeded", "2", "random_forest", "0.95", "3", "7"]
    wide = control_plane.kubectl("get", "treq", "shown", "-n", namespace, "-o", "wide").stdout.splitlines()
    header, row = wide[0].split(), wide[1].split()
    assert "RUN" not in table[0] and row[header.index("RUN")] == "train-1"


def test_server_side_apply_by_two_managers_conflicts_on_the_same_field(kube, namespace):
    """The bridge's patches and a user's apply meet field ownership: a second manager changing a
    field the first applied is refused unless forced."""
    from kubernetes.client.exceptions import ApiException

    manifest = training_request("owned", fast_spec(), namespace=namespace)
    server_side_apply(kube, manifest, manager="alice")
    changed = copy.deepcopy(manifest)
    changed["spec"]["max_retry"] = 2
    with pytest.raises(ApiException) as conflict:
        kube.call_api(
            f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/owned",
            "PATCH",
            query_params=[("fieldManager", "bob")],
            header_params={"Content-Type": "application/apply-patch+yaml"},
            body=changed,
            auth_settings=["BearerToken"],
        )
    assert conflict.value.status == 409 and "max_retry" in conflict.value.body
    stored = server_side_apply(kube, changed, manager="bob")  # forced: bob now owns max_retry
    assert stored["spec"]["max_retry"] == 2


def test_the_generated_crd_is_what_the_api_server_stores(kube):
    """The API server keeps the schema as generated (nothing dropped or rewritten)."""
    from kubernetes import client

    stored = client.ApiextensionsV1Api(kube).api_client.call_api(
        f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{PLURAL}.{GROUP}",
        "GET",
        auth_settings=["BearerToken"],
        response_type="object",
        _return_http_data_only=True,
    )
    generated = training_request_crd()["spec"]["versions"][0]
    served = stored["spec"]["versions"][0]
    assert served["schema"] == generated["schema"]
    assert served["additionalPrinterColumns"] == generated["additionalPrinterColumns"]


def test_every_status_field_the_operator_writes_is_kept(kube, namespace):
    """A status with every field set, written through /status, reads back unchanged: nothing the
    operator records (and resumes from after a restart) is pruned by the schema."""
    from issueops.lifecycle.state_machine import AttemptRecord, TrainingRequest, set_condition

    stored = objects(kube).create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        training_request("full", fast_spec(issue={"repository": "octo-org/models", "number": 7})),
    )
    request = TrainingRequest.from_resource(stored)
    request.phase, request.attempt, request.restarts = "Running", 2, 1
    request.run_id, request.run_handle = "train-20260101-000000-aaaa-r1", "pid:42"
    request.model_name, request.model_version, request.metric_value = "bc-rf", "3", 0.91
    request.adjusted_hyperparameters = {"n_estimators": 5}
    request.attempts = [
        AttemptRecord(1, "train-20260101-000000-aaaa", "retrain", 0.85, {"n_estimators": 1}, 11),
        AttemptRecord(
            2, "train-20260101-000000-aaaa-r1", None, None, {}, 12, ["train-20260101-000000-aaaa-r0"]
        ),
    ]
    request.status_comment_id, request.status_digest = 12, "c6ce8983abc6a6c3"
    request.wait_deadline, request.applied_inputs = "2026-01-02T00:00:00Z", ["comment-8"]
    set_condition(request, "Running", True, "AttemptSubmitted", "attempt 2")
    status = request.status()
    assert all(value not in (None, [], {}) for value in status.values()), status
    stored["status"] = status
    objects(kube).replace_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, "full", stored)
    read = objects(kube).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "full")["status"]
    assert read == status
    assert TrainingRequest.from_resource({**stored, "status": read}).status() == status
