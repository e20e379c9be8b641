"""The TrainingRequest operator against kmock's Kubernetes API emulator, run by kopf.testing.

The emulator speaks the Kubernetes REST API over loopback (discovery, list/watch, merge and JSON
patches, the status subresource, finalizers); it does not validate against the CRD schema, so
an invalid TrainingRequest is rejected here by the operator's own validation (the API server's
schema check is covered by test_manifests.py and, on a real cluster, test_cluster.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from pathlib import Path

import httpx
import kopf
import kubernetes.config.kube_config
import pytest
from kopf.testing import KopfRunner

from issueops.lifecycle.crd import GROUP, KIND, PLURAL, VERSION
from issueops.lifecycle.runtime import Admission

kmock = pytest.importorskip("kmock")

OPERATOR = str(Path(__file__).resolve().parent.parent / "operator" / "issueops_operator.py")
NAMESPACE = "default"
API = f"/apis/{GROUP}/{VERSION}/namespaces/{NAMESPACE}/{PLURAL}"


class KubeEmulator:
    """kmock's KubernetesEmulator on loopback, served from its own thread and event loop."""

    def __init__(self):
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        assert self._ready.wait(20), "the emulator did not start"

    def _serve(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator) as server:
            emulator.resources[f"{GROUP}/{VERSION}/{PLURAL}"] = kmock.ResourceInfo(
                kind=KIND,
                singular="trainingrequest",
                namespaced=True,
                subresources=["status"],
                verbs=["get", "list", "watch", "create", "patch", "update", "delete"],
            )
            emulator.resources["v1/namespaces"] = kmock.ResourceInfo(
                kind="Namespace", namespaced=False, verbs=["get", "list", "watch"]
            )
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    # the REST API, as kubectl would use it
    def create(self, name: str, spec: dict) -> dict:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            # A real API server sets resourceVersion; kopf's JSON patches test it.
            "metadata": {"name": name, "namespace": NAMESPACE, "uid": f"uid-{name}", "resourceVersion": "1"},
            "spec": spec,
        }
        answer = httpx.post(f"{self.url}{API}", json=body)
        answer.raise_for_status()
        return answer.json()

    def get(self, name: str) -> dict | None:
        answer = httpx.get(f"{self.url}{API}/{name}")
        return None if answer.status_code == 404 else answer.json()

    def set_input(self, name: str, given: dict) -> None:
        """`kubectl patch --type json` replacing spec.operatorInput as a whole."""
        answer = httpx.patch(
            f"{self.url}{API}/{name}",
            content=json.dumps([{"op": "add", "path": "/spec/operatorInput", "value": given}]),
            headers={"Content-Type": "application/json-patch+json"},
        )
        answer.raise_for_status()

    def delete(self, name: str) -> None:
        httpx.delete(f"{self.url}{API}/{name}").raise_for_status()

    def wait(self, name: str, check, timeout: float = 180.0, what: str = "") -> dict:
        deadline = time.monotonic() + timeout
        body = None
        while time.monotonic() < deadline:
            body = self.get(name)
            if check(body):
                return body
            time.sleep(0.3)
        raise AssertionError(f"{name}: timed out waiting for {what}; last seen {body}")


@pytest.fixture
def cluster(home, tmp_path, monkeypatch):
    emulator = KubeEmulator()
    config = tmp_path / "kubeconfig"
    config.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters: [{{name: kmock, cluster: {{server: '{emulator.url}'}}}}]\n"
        "users: [{name: test, user: {token: test-token}}]\n"
        f"contexts: [{{name: kmock, context: {{cluster: kmock, user: test, namespace: {NAMESPACE}}}}}]\n"
        "current-context: kmock\n"
    )
    monkeypatch.setenv("KUBECONFIG", str(config))
    # The Kubernetes client library (the bridge's cluster mode) reads KUBECONFIG at import.
    monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(config))
    monkeypatch.setenv("ISSUEOPS_OPERATOR_LOCAL", "1")
    monkeypatch.setenv("ISSUEOPS_OPERATOR_INTERVAL", "0.5")
    monkeypatch.delenv("ISSUEOPS_KFP_HOST", raising=False)
    yield emulator
    emulator.close()


def operator() -> KopfRunner:
    return KopfRunner(
        ["run", "--standalone", f"--namespace={NAMESPACE}", OPERATOR],
        registry=kopf.OperatorRegistry(),
        timeout=60,
    )


def spec(threshold: float, max_retry: int, **hyperparameters) -> dict:
    return {
        "learning_type": "supervised",
        "algorithm": "random_forest",
        "dataset_id": "sklearn:breast_cancer",
        "model_name": "bc-rf",
        "hyperparameters": hyperparameters or {"n_estimators": 1, "max_depth": 1},
        "evaluation_threshold": threshold,
        "max_retry": max_retry,
    }


def phase(body: dict | None) -> str | None:
    return ((body or {}).get("status") or {}).get("phase")


# ---------------------------------------------------------------------- no pipeline runs


def test_invalid_training_request_is_failed_with_the_problems_and_never_run(cluster, home):
    bad = spec(0.9, 99, n_estimators=10, learning_rate=0.1)
    with operator() as runner:
        cluster.create("bad", bad)
        body = cluster.wait("bad", lambda b: phase(b) == "Failed", 30, "rejection")
    assert runner.exception is None
    message = body["status"]["message"]
    assert "max_retry must be an integer from 0 to 10" in message
    assert "'learning_rate' is not known for random_forest" in message
    assert body["status"]["conditions"][0]["reason"] == "InvalidSpec"
    assert not (home / "attempts").exists() or not list((home / "attempts").glob("*.spec.json"))


def test_admission_keeps_the_limit_and_the_creation_order():
    admission = Admission(limit=2)
    phases = {
        ("ns", "c"): ("Pending", "2026-01-01T00:00:03Z"),
        ("ns", "a"): ("Pending", "2026-01-01T00:00:01Z"),
        ("ns", "b"): ("Pending", "2026-01-01T00:00:02Z"),
        ("ns", "done"): ("Succeeded", "2026-01-01T00:00:00Z"),
    }
    assert not admission.may_start(("ns", "c"), phases)  # two are ahead of it
    assert admission.may_start(("ns", "a"), phases)
    assert admission.may_start(("ns", "b"), phases)
    # The index has not caught up yet, but a and b hold the two slots.
    assert not admission.may_start(("ns", "c"), phases)
    phases[("ns", "a")] = ("WaitingForOperator", phases[("ns", "a")][1])
    phases[("ns", "b")] = ("Running", phases[("ns", "b")][1])
    assert admission.may_start(("ns", "c"), phases)


# ---------------------------------------------------------------------- the bridge in cluster mode


def test_bridge_in_cluster_mode_creates_and_patches_training_requests(cluster, home, monkeypatch):
    from issueops.bridge.controller import GitHubClients
    from issueops.bridge.kube import KubernetesBook
    from issueops.bridge.wiring import open_bridge
    from issueops.config import Settings
    from issueops.github import RetryPolicy

    try:
        from tests.github_double import GitHubDouble
        from tests.test_bridge import SPEC, TOKEN
    except ModuleNotFoundError:
        from github_double import GitHubDouble
        from test_bridge import SPEC, TOKEN

    monkeypatch.setenv("ISSUEOPS_NAMESPACE", NAMESPACE)
    with GitHubDouble(token=TOKEN) as gh:
        gh.add_user("alice", role="write")
        monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
        monkeypatch.setenv("GITHUB_REPOSITORY", gh.full_name)
        monkeypatch.setenv("GITHUB_API_URL", gh.url)
        settings = Settings.from_env()
        clients = GitHubClients(settings, throttle=False, retry=RetryPolicy(attempts=2, backoff=0.01))
        bridge = open_bridge(settings, github=clients, cluster=True)
        assert isinstance(bridge.book, KubernetesBook)
        number = gh.create_issue(
            "Train", body=SPEC.format(threshold=0.9, max_retry=1), labels=["mlops:train"], user="alice"
        )
        issue = {"number": number, "labels": [{"name": "mlops:train"}], "state": "open"}
        issue["body"] = gh.state.issues[number].body
        base = {"repository": {"full_name": gh.full_name}, "sender": {"login": "alice", "type": "User"}}
        bridge.inbox.accept("d1", "issues", json.dumps({**base, "action": "opened", "issue": issue}).encode())
        bridge.run_once()
        name = f"octo-org-models-{number}"
        body = cluster.get(name)
        assert body["spec"]["algorithm"] == "random_forest"
        assert body["spec"]["issue"] == {"repository": gh.full_name, "number": number}
        assert body["metadata"]["labels"]["issueops.dev/issue"] == str(number)
        assert "environment" not in body["spec"]  # unset fields are left out, not null

        # The operator would have moved it to WaitingForOperator; the bridge reads that status.
        httpx.patch(
            f"{cluster.url}{API}/{name}/status",
            content=json.dumps({"status": {"phase": "WaitingForOperator", "attempt": 1}}),
            headers={"Content-Type": "application/merge-patch+json"},
        ).raise_for_status()

        def comment(cid: int, text: str) -> bytes:
            return json.dumps(
                {**base, "action": "created", "issue": issue, "comment": {"id": cid, "body": text}}
            ).encode()

        bridge.inbox.accept("d2", "issue_comment", comment(7, "adjusted_hyperparameters:\n  gamma: 1"))
        bridge.run_once()
        assert "operatorInput" not in cluster.get(name)["spec"]
        assert "'gamma' is not known for random_forest" in gh.comments_on(number)[-1].body

        bridge.inbox.accept(
            "d3", "issue_comment", comment(8, "adjusted_hyperparameters:\n  n_estimators: 50")
        )
        bridge.run_once()
        assert cluster.get(name)["spec"]["operatorInput"] == {
            "action": "retrain",
            "id": "comment-8",
            "by": "alice",
            "adjusted_hyperparameters": {"n_estimators": 50},
        }
        bridge.inbox.accept("d4", "issue_comment", comment(9, "adjusted_hyperparameters:\n  max_depth: 3"))
        bridge.run_once()
        # Replaced, not merged: n_estimators from the earlier input is gone.
        assert cluster.get(name)["spec"]["operatorInput"]["adjusted_hyperparameters"] == {"max_depth": 3}
        bridge.inbox.close()


# ---------------------------------------------------------------------- the full operator loop


def test_operator_limits_runs_survives_a_restart_cancels_on_delete_and_takes_operator_input(
    cluster, home, monkeypatch
):
    """Two requests with a limit of one run: the second waits its turn; an operator restart
    while the first runs submits nothing twice; deleting the second while it runs stops its
    process; invalid operator input is refused; valid input starts the next attempt, which
    exhausts max_retry and ends Failed: nothing it made reached production, so nothing rolled back."""
    monkeypatch.setenv("ISSUEOPS_MAX_RUNNING", "1")
    attempts = home / "attempts"
    with operator():
        cluster.create("first", spec(0.99, 1))
        first = cluster.wait("first", lambda b: (b.get("status") or {}).get("runHandle"), 60, "submission")
        run_id = first["status"]["runId"]
        cluster.create("second", spec(0.5, 0))
        second = cluster.wait("second", lambda b: phase(b) == "Pending", 30, "queued")
        time.sleep(2)
        assert phase(cluster.get("second")) == "Pending"
        assert "run limit" in cluster.get("second")["status"]["message"]
    assert phase(cluster.get("first")) in ("Running", "WaitingForOperator")

    with operator() as runner:  # a restarted operator picks the running request up
        first = cluster.wait("first", lambda b: phase(b) == "WaitingForOperator", 180, "judgement")
        assert first["status"]["runId"] == run_id and first["status"]["attempt"] == 1
        assert sorted(p.name for p in attempts.glob("*.spec.json")) == [f"{run_id}.spec.json"]

        second = cluster.wait("second", lambda b: (b.get("status") or {}).get("runHandle"), 60, "its turn")
        pid = int(second["status"]["runHandle"].removeprefix("pid:"))
        cluster.delete("second")
        cluster.wait("second", lambda b: b is None, 60, "deletion")
        deadline = time.monotonic() + 15
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]

        cluster.set_input(
            "first", {"id": "1", "action": "retrain", "adjusted_hyperparameters": {"learning_rate": 0.1}}
        )
        refused = cluster.wait(
            "first",
            lambda b: any(c["type"] == "InputAccepted" for c in b["status"].get("conditions", [])),
            30,
            "the refusal",
        )
        assert phase(refused) == "WaitingForOperator"
        assert "learning_rate" in refused["status"]["message"]

        cluster.set_input(
            "first", {"id": "2", "action": "retrain", "adjusted_hyperparameters": {"n_estimators": 2}}
        )
        done = cluster.wait("first", lambda b: phase(b) in ("RolledBack", "Failed"), 240, "attempt 2")
    assert runner.exception is None
    status = done["status"]
    assert status["phase"] == "Failed", status["message"]
    assert "has no production version" in status["message"]
    assert status["attempt"] == 2 and status["adjustedHyperparameters"] == {"n_estimators": 2}
    assert [a["decision"] for a in status["attempts"]] == ["retrain", "fail"]
    assert len(list(attempts.glob("*.spec.json"))) == 3  # first ×2, second ×1: nothing twice
    assert os.environ.get("ISSUEOPS_MAX_RUNNING") == "1"
