"""manifests/ installed on the real API server, and the operator and the bridge running with their
own ServiceAccounts' tokens: every call they make is allowed (the API server's audit log says
so), calls outside their roles are refused, and bad credentials are named as such."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import httpx
import pytest

from issueops.lifecycle.crd import GROUP, PLURAL, VERSION
from tests.cluster import (
    REPO,
    OperatorProcess,
    client_for,
    fast_spec,
    service_account_token,
    training_request,
    wait_until,
)
from tests.controlplane import free_port
from tests.controlplane.pki import service_account_jwt

pytestmark = pytest.mark.cluster

NAMESPACE = "issueops"  # manifests/namespace.yaml
OPERATOR_SA = f"system:serviceaccount:{NAMESPACE}:issueops-operator"
BRIDGE_SA = f"system:serviceaccount:{NAMESPACE}:issueops-bridge"
SECRET = "webhook-secret-for-the-cluster-tests"
GITHUB_TOKEN = "issueops-cluster-test-credential-7f3a"


@pytest.fixture(scope="module")
def installed(kube, control_plane):
    """`kubectl apply --server-side -k manifests/`, after a server-side dry run of all of it (which
    needs the namespace: a dry run creates nothing, so namespaced objects would be NotFound)."""
    control_plane.kubectl("apply", "--server-side", "-f", str(REPO / "manifests" / "namespace.yaml"))
    dry = control_plane.kubectl("apply", "--server-side", "--dry-run=server", "-k", str(REPO / "manifests"))
    lines = dry.stdout.splitlines()
    assert lines and all(line.endswith("(server dry run)") for line in lines), dry.stdout
    applied = control_plane.kubectl("apply", "--server-side", "-k", str(REPO / "manifests"))
    assert len(applied.stdout.splitlines()) == len(lines)
    return lines


def as_service_account(kube, control_plane, tmp_path, name: str):
    """(kubeconfig path, ApiClient) authenticating with `name`'s own token from TokenRequest."""
    token = service_account_token(kube, NAMESPACE, name)
    config = control_plane.token_kubeconfig(tmp_path / f"{name}.kubeconfig", token)
    return config, client_for(config)


def status_code(call, *args) -> int:
    """The HTTP status the API server answers `call(*args)` with."""
    from kubernetes.client.exceptions import ApiException

    try:
        call(*args)
    except ApiException as refused:
        return refused.status
    return 200


def refusals(control_plane, user: str) -> list[str]:
    """The user's requests the API server refused as unauthenticated or forbidden."""
    return [
        f"{e['verb']} {e['requestURI']} -> {e['responseStatus']['code']}"
        for e in control_plane.audit(user)
        if e.get("responseStatus", {}).get("code") in (401, 403)
    ]


def test_the_manifests_pass_a_server_dry_run_and_install(installed):
    kinds = {line.split()[0].split("/")[0] for line in installed}
    assert {
        "namespace",
        "customresourcedefinition.apiextensions.k8s.io",
        "role.rbac.authorization.k8s.io",
    } <= kinds
    assert {"deployment.apps", "serviceaccount", "configmap", "service"} <= kinds


class Bridge:
    """`issueops bridge serve` in cluster mode as a process, with the given kubeconfig."""

    def __init__(self, kubeconfig, gh, home, log):
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ISSUEOPS_")}
        env.update(
            {
                "KUBECONFIG": str(kubeconfig),
                "ISSUEOPS_BRIDGE_MODE": "cluster",
                "ISSUEOPS_NAMESPACE": NAMESPACE,
                "ISSUEOPS_HOME": str(home),
                "ISSUEOPS_GITHUB_THROTTLE": "0",
                "ISSUEOPS_RETRY_BACKOFF": "0s",
                "GITHUB_WEBHOOK_SECRET": SECRET,
                "GITHUB_TOKEN": GITHUB_TOKEN,
                "GITHUB_REPOSITORY": gh.full_name,
                "GITHUB_API_URL": gh.url,
                "PYTHONPATH": str(REPO),
            }
        )
        self.gh, self.log = gh, log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "issueops", "bridge", "serve", "--port", str(self.port)],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_until(lambda: "listening on" in log.read_text(), 60, "the bridge to listen")

    def deliver(self, event: str, payload: dict) -> httpx.Response:
        from issueops.bridge.webhook import sign

        raw = json.dumps(payload).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "GitHub-Hookshot/0a1b2c3",
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": str(uuid.uuid4()),
            "X-Hub-Signature-256": sign(SECRET, raw),
        }
        return httpx.post(f"http://127.0.0.1:{self.port}/webhook", content=raw, headers=headers, timeout=10)

    def _get(self, path: str) -> dict:
        headers = {"Authorization": f"token {GITHUB_TOKEN}"}
        return httpx.get(f"{self.gh.url}/repos/{self.gh.full_name}{path}", headers=headers).json()

    def issue_opened(self, number: int, sender: str) -> dict:
        return {
            "action": "opened",
            "issue": self._get(f"/issues/{number}"),
            "repository": self._get(""),
            "sender": self.gh._user_json(sender),
        }

    def comment(self, number: int, body: str, sender: str) -> dict:
        comment_id = self.gh.add_comment(number, body, user=sender)
        return {
            "action": "created",
            "issue": self._get(f"/issues/{number}"),
            "comment": self._get(f"/issues/comments/{comment_id}"),
            "repository": self._get(""),
            "sender": self.gh._user_json(sender),
        }

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


ISSUE = """Please train this.

```yaml
learning_type: supervised
algorithm: random_forest
dataset_id: sklearn:breast_cancer
model_name: bc-rf-rbac
hyperparameters:
  n_estimators: 1
  max_depth: 1
evaluation_threshold: 0.9
max_retry: 1
```
"""


def test_the_bridge_and_the_operator_with_their_own_tokens_run_an_issue_to_a_model(
    installed, kube, control_plane, tmp_path
):
    """An issue opened on GitHub (signed webhook deliveries to the bridge) becomes a
    TrainingRequest; the operator runs it, asks on the issue, takes the answer the bridge
    patches in, and registers a model. Neither ServiceAccount is refused anything."""
    from kubernetes import client

    from tests.github_double import GitHubDouble

    operator_config, _ = as_service_account(kube, control_plane, tmp_path, "issueops-operator")
    bridge_config, _ = as_service_account(kube, control_plane, tmp_path, "issueops-bridge")
    requests = client.CustomObjectsApi(kube)
    with GitHubDouble(token=GITHUB_TOKEN) as gh:
        gh.add_user("alice", role="write")
        github = {"GITHUB_TOKEN": GITHUB_TOKEN, "GITHUB_REPOSITORY": gh.full_name, "GITHUB_API_URL": gh.url}
        operator = OperatorProcess(
            operator_config, NAMESPACE, tmp_path / "operator-home", tmp_path / "operator.log", env=github
        ).start()
        bridge = Bridge(bridge_config, gh, tmp_path / "bridge-home", tmp_path / "bridge.log")
        try:
            number = gh.create_issue("Train", body=ISSUE, labels=["mlops:train"], user="alice")
            assert bridge.deliver("issues", bridge.issue_opened(number, "alice")).status_code == 202
            name = f"octo-org-models-{number}"

            def status():
                from kubernetes.client.exceptions import ApiException

                try:
                    found = requests.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name)
                except ApiException:
                    return {}
                return found.get("status") or {}

            wait_until(lambda: status().get("phase") == "WaitingForOperator", 300, "the operator's question")
            answer = bridge.comment(
                number, "adjusted_hyperparameters:\n  n_estimators: 20\n  max_depth: 5", "alice"
            )
            assert bridge.deliver("issue_comment", answer).status_code == 202
            done = wait_until(
                lambda: (s := status()).get("phase") in ("Succeeded", "Failed", "RolledBack") and s,
                300,
                "attempt 2",
            )
            comments = [c.body for c in gh.comments_on(number)]
        finally:
            bridge.stop()
            operator.stop()
    assert done["phase"] == "Succeeded" and done["modelVersion"] == "1", done.get("message")
    assert any("n_estimators" in c for c in comments)  # the question, asked on the issue
    time.sleep(1)  # the last audit events are written after their responses
    for user in (OPERATOR_SA, BRIDGE_SA):
        events = control_plane.audit(user)
        assert events, f"{user} made no calls"
        assert refusals(control_plane, user) == [], operator.output()[-3000:]
    verbs = {(e["verb"], e.get("objectRef", {}).get("subresource")) for e in control_plane.audit(OPERATOR_SA)}
    assert {("watch", None), ("patch", None), ("patch", "status")} <= verbs
    bridge_verbs = {e["verb"] for e in control_plane.audit(BRIDGE_SA)}
    assert {"create", "patch", "list"} <= bridge_verbs


def test_calls_outside_their_roles_are_refused(installed, kube, control_plane, tmp_path):
    from kubernetes import client

    for name in ("issueops-operator", "issueops-bridge"):
        _, api = as_service_account(kube, control_plane, tmp_path, name)
        core, objects = client.CoreV1Api(api), client.CustomObjectsApi(api)
        assert status_code(core.read_namespaced_secret, "issueops-github", NAMESPACE) == 403
        assert status_code(core.list_namespaced_secret, "kube-system") == 403
        assert status_code(core.list_node) == 403
        assert status_code(core.list_namespace) == 403
        assert status_code(objects.list_namespaced_custom_object, GROUP, VERSION, "default", PLURAL) == 403
        delete = objects.delete_namespaced_custom_object
        assert status_code(delete, GROUP, VERSION, NAMESPACE, PLURAL, "any") == 403
    _, bridge = as_service_account(kube, control_plane, tmp_path, "issueops-bridge")
    status = client.CustomObjectsApi(bridge).patch_namespaced_custom_object_status
    assert status_code(status, GROUP, VERSION, NAMESPACE, PLURAL, "any", {"status": {}}) == 403
    _, operator = as_service_account(kube, control_plane, tmp_path, "issueops-operator")
    create = client.CustomObjectsApi(operator).create_namespaced_custom_object
    sneaky = training_request("sneaky", fast_spec())
    assert status_code(create, GROUP, VERSION, NAMESPACE, PLURAL, sneaky) == 403


def test_operator_input_from_a_name_with_no_rights_is_refused(installed, kube, control_plane, tmp_path):
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core = client.CoreV1Api(kube)
    core.create_namespaced_service_account(NAMESPACE, {"metadata": {"name": "outsider"}})
    objects = client.CustomObjectsApi(kube)
    objects.create_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, PLURAL, training_request("guarded", fast_spec())
    )
    _, outsider = as_service_account(kube, control_plane, tmp_path, "outsider")
    given = {"spec": {"operatorInput": {"id": "x", "action": "cancel", "by": "outsider"}}}
    with pytest.raises(ApiException) as refused:
        client.CustomObjectsApi(outsider).patch_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, PLURAL, "guarded", given
        )
    assert refused.value.status == 403
    message = json.loads(refused.value.body)["message"]
    assert f'"system:serviceaccount:{NAMESPACE}:outsider" cannot patch resource "trainingrequests"' in message
    stored = objects.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "guarded")
    assert "operatorInput" not in stored["spec"]


def test_a_wrong_or_expired_token_is_named_as_such(installed, kube, control_plane, tmp_path):
    from kubernetes import client

    from issueops.bridge.kube import KubernetesBook
    from issueops.errors import Unauthorized

    uid = client.CoreV1Api(kube).read_namespaced_service_account("issueops-bridge", NAMESPACE).metadata.uid

    def token(expires_in: int) -> str:
        return service_account_jwt(
            control_plane.pki, control_plane.issuer, NAMESPACE, "issueops-bridge", uid, expires_in=expires_in
        )

    expired = token(-600)
    for label, bad in (("wrong", "not-a-token"), ("expired", expired)):
        config = control_plane.token_kubeconfig(tmp_path / f"{label}.kubeconfig", bad)
        book = KubernetesBook(client.CustomObjectsApi(client_for(config)), NAMESPACE)
        with pytest.raises(Unauthorized) as refused:
            book.find("octo-org/models", 404)
        assert str(refused.value) == "Kubernetes refused to list training requests (401): Unauthorized"
    # The same token, unexpired, is accepted: the refusal above was the expiry.
    config = control_plane.token_kubeconfig(tmp_path / "fresh.kubeconfig", token(600))
    assert (
        KubernetesBook(client.CustomObjectsApi(client_for(config)), NAMESPACE).find("octo-org/models", 404)
        is None
    )

    # The operator with the expired token keeps running and says what is wrong, again and again.
    config = control_plane.token_kubeconfig(tmp_path / "operator.kubeconfig", expired)
    with OperatorProcess(config, NAMESPACE, tmp_path / "home", tmp_path / "operator.log") as operator:
        refused = "refused the operator's credentials (401 Unauthorized): its token is wrong or has expired"
        wait_until(lambda: refused in operator.output(), 60, "the operator to name the refused token")
        assert operator.process.poll() is None, operator.output()[-2000:]
