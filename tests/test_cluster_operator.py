"""The operator as a process (`kopf run operator/issueops_operator.py`, attempts on the local
runner) against the real API server: the request loop, operator input, cancellation on delete, a
kill and restart mid-attempt, the run limit under load, and what it says when things are wrong."""

from __future__ import annotations

import json
import signal
import threading
from collections import Counter
from pathlib import Path

import pytest

from issueops.lifecycle.crd import GROUP, PLURAL, VERSION
from tests.cluster import OperatorProcess, fast_spec, training_request, wait_until

pytestmark = pytest.mark.cluster

TERMINAL = ("Succeeded", "Failed", "RolledBack", "Cancelled")


class Requests:
    """TrainingRequests of one namespace as a user sees them."""

    def __init__(self, kube, namespace: str):
        from kubernetes import client

        self.api, self.namespace = client.CustomObjectsApi(kube), namespace

    def create(self, name: str, spec: dict) -> dict:
        return self.api.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, training_request(name, spec)
        )

    def get(self, name: str) -> dict | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def status(self, name: str) -> dict:
        return (self.get(name) or {}).get("status") or {}

    def wait(self, name: str, check, timeout: float, what: str) -> dict:
        """The status once `check(status)` holds; on a timeout, the status it was left in."""
        try:
            return wait_until(lambda: (s := self.status(name)) and check(s) and s, timeout, what)
        except AssertionError:
            raise AssertionError(
                f"{name}: timed out waiting for {what}; status {self.status(name)}"
            ) from None


def operator(control_plane, namespace: str, tmp_path: Path, **env: str) -> OperatorProcess:
    return OperatorProcess(
        control_plane.kubeconfig,
        namespace,
        tmp_path / "home",
        tmp_path / "operator.log",
        env={k: str(v) for k, v in env.items()},
    )


def submissions(home: Path) -> list[str]:
    """Run ids the local runner was asked to start (one spec file per submitted attempt)."""
    return sorted(p.name.removesuffix(".spec.json") for p in (home / "attempts").glob("*.spec.json"))


def attempt_pid(status: dict) -> int:
    return int(status["runHandle"].removeprefix("pid:"))


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_request_waits_for_input_retrains_and_succeeds_with_a_model_version(
    kube, control_plane, namespace, tmp_path
):
    requests = Requests(kube, namespace)
    with operator(control_plane, namespace, tmp_path) as running:
        requests.create("loop", fast_spec(evaluation_threshold=0.9, max_retry=1))
        waiting = requests.wait("loop", lambda s: s.get("phase") == "WaitingForOperator", 240, "the question")
        assert waiting["attempt"] == 1 and waiting["runId"] and waiting["metricValue"] < 0.9
        # The operator input a user (or the bridge) writes, as the README shows it.
        control_plane.kubectl(
            "patch",
            "treq",
            "loop",
            "-n",
            namespace,
            "--type=json",
            "-p",
            json.dumps(
                [
                    {
                        "op": "add",
                        "path": "/spec/operatorInput",
                        "value": {
                            "id": "1",
                            "action": "retrain",
                            "adjusted_hyperparameters": {"n_estimators": 20, "max_depth": 5},
                        },
                    }
                ]
            ),
        )
        done = requests.wait("loop", lambda s: s.get("phase") in TERMINAL, 300, "attempt 2")
    assert running.process.returncode == 0, running.output()[-2000:]
    assert done["phase"] == "Succeeded", done.get("message")
    assert done["attempt"] == 2 and done["modelVersion"] == "1" and done["metricValue"] >= 0.9
    assert done["adjustedHyperparameters"] == {"n_estimators": 20, "max_depth": 5}
    assert [a["decision"] for a in done["attempts"]] == ["retrain", "pass"]
    assert len(submissions(tmp_path / "home")) == 2
    row = control_plane.kubectl("get", "treq", "loop", "-n", namespace, "--no-headers").stdout.split()
    assert row[1:3] == ["Succeeded", "2"] and row[5] == "1"


def test_deleting_a_running_request_cancels_its_run(kube, control_plane, namespace, tmp_path):
    requests = Requests(kube, namespace)
    with operator(control_plane, namespace, tmp_path):
        requests.create("gone", fast_spec(hyperparameters={"n_estimators": 400}))
        status = requests.wait("gone", lambda s: s.get("runHandle"), 120, "its run to start")
        pid = attempt_pid(status)
        assert alive(pid)
        # kubectl waits until the operator has released its finalizer.
        control_plane.kubectl("delete", "treq", "gone", "-n", namespace, "--timeout=60s")
        assert requests.get("gone") is None
        wait_until(lambda: not alive(pid), 20, f"attempt process {pid} to stop")
    assert len(submissions(tmp_path / "home")) == 1


def test_a_killed_operator_resumes_the_attempt_without_submitting_it_again(
    kube, control_plane, namespace, tmp_path
):
    requests = Requests(kube, namespace)
    first = operator(control_plane, namespace, tmp_path).start()
    requests.create("resumed", fast_spec(evaluation_threshold=0.9, hyperparameters={"n_estimators": 200}))
    status = requests.wait("resumed", lambda s: s.get("runHandle"), 120, "its run to start")
    first.stop(signal.SIGKILL)  # no clean-up, mid-attempt
    pid = attempt_pid(status)
    assert alive(pid), "the attempt ended before the operator was killed: nothing was resumed"
    with operator(control_plane, namespace, tmp_path):
        done = requests.wait("resumed", lambda s: s.get("phase") in TERMINAL, 240, "the attempt's end")
    assert done["phase"] == "Succeeded" and done["modelVersion"] == "1", done.get("message")
    assert done["runId"] == status["runId"] and done["attempt"] == 1
    assert submissions(tmp_path / "home") == [status["runId"]]


def test_twenty_requests_never_run_more_than_three_at_once_none_lost_none_twice(
    kube, control_plane, namespace, tmp_path
):
    from kubernetes import watch

    requests = Requests(kube, namespace)
    phases: dict[str, str] = {}
    most_running = 0
    stop = threading.Event()
    names = [f"r{i:02d}" for i in range(20)]

    def follow():
        """Every change as the API server orders it: the number Running at any one time."""
        nonlocal most_running
        stream = watch.Watch()
        for event in stream.stream(
            requests.api.list_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            timeout_seconds=600,
        ):
            body = event["object"]
            phases[body["metadata"]["name"]] = (body.get("status") or {}).get("phase") or "Pending"
            most_running = max(most_running, sum(p == "Running" for p in phases.values()))
            if stop.is_set() or (len(phases) == 20 and all(p in TERMINAL for p in phases.values())):
                stream.stop()

    watcher = threading.Thread(target=follow, daemon=True)
    watcher.start()
    with operator(control_plane, namespace, tmp_path, ISSUEOPS_MAX_RUNNING=3):
        for name in names:  # a miss with no retry left: one attempt each
            requests.create(name, fast_spec(evaluation_threshold=0.99, max_retry=0))
        try:
            for name in names:
                requests.wait(name, lambda s: s.get("phase") in TERMINAL, 600, "the end")
        finally:
            stop.set()
    watcher.join(30)
    statuses = {name: requests.status(name) for name in names}
    # Each missed its threshold with no retry left: it ends without a model (Failed, or RolledBack
    # where production had to be restored), after one attempt.
    assert set(Counter(s["phase"] for s in statuses.values())) <= {"Failed", "RolledBack"}
    assert all(s["attempt"] == 1 for s in statuses.values())
    run_ids = sorted(s["runId"] for s in statuses.values())
    assert submissions(tmp_path / "home") == run_ids and len(set(run_ids)) == 20
    assert most_running == 3  # the limit was reached and never passed


def test_a_spec_the_api_server_accepts_but_issueops_refuses_fails_with_the_reason(
    kube, control_plane, namespace, tmp_path
):
    requests = Requests(kube, namespace)
    with operator(control_plane, namespace, tmp_path):
        requests.create("nodata", fast_spec(dataset_id="sklearn:no_such_dataset"))
        failed = requests.wait("nodata", lambda s: s.get("phase") in TERMINAL, 120, "its failure")
    assert failed["phase"] == "Failed"
    assert "no_such_dataset" in failed["message"]


def test_an_operator_started_before_its_crd_says_why_and_serves_once_it_is_installed(control_plane, tmp_path):
    """On an API server without the CRD (a control plane of its own) the operator keeps running,
    names the missing CRD and the command that installs it, and picks requests up once it is there."""
    from tests.cluster import client_for, install_training_request_crd
    from tests.controlplane import ControlPlane

    bare = ControlPlane(tmp_path / "bare", control_plane.bin_dir).start(die_with_parent=True)
    try:
        api = client_for(bare.kubeconfig)
        running = operator(bare, "default", tmp_path).start()
        try:
            missing = "does not serve trainingrequests.issueops.dev/v1alpha1: install the CRD with"
            wait_until(
                lambda: running.output().count(missing) >= 2, 60, "the operator to say twice why it waits"
            )
            assert running.process.poll() is None, running.output()[-2000:]
            assert "kubectl apply --server-side -f manifests/crds/trainingrequests.yaml" in running.output()
            install_training_request_crd(api)
            requests = Requests(api, "default")
            requests.create("late", fast_spec(max_retry=0))
            requests.wait("late", lambda s: s.get("phase") in TERMINAL, 240, "the request to be run")
        finally:
            running.stop()
        assert running.process.returncode == 0, running.output()[-2000:]
    finally:
        bare.stop()
