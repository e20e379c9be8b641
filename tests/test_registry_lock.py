"""The registry's per-model lock: a flock beside a SQLite registry, a Kubernetes Lease on a cluster."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from issueops.config import Settings
from issueops.errors import ExternalServiceError, InvalidInput
from issueops.registry.lock import FileLock, LeaseLock, lease_name, registry_lock
from tests.lease_double import LeaseApiDouble

HOLD_FOREVER = """
import sys, time
from pathlib import Path
from issueops.registry.lock import FileLock
with FileLock(Path(sys.argv[1])).hold("churn"):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_file_lock_waits_for_its_holder_and_is_freed_when_the_holder_is_killed(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_FOREVER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ExternalServiceError, match="Another change to model churn is still in progress"):
            with FileLock(tmp_path, wait_s=0.3).hold("churn"):
                pass
        with FileLock(tmp_path, wait_s=0.3).hold("other-model"):  # one lock per model
            pass
        holder.kill()  # kill -9: the kernel releases the lock
        holder.wait()
        with FileLock(tmp_path, wait_s=30).hold("churn"):
            pass
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_is_chosen_by_settings(tmp_path):
    sqlite = f"sqlite:///{tmp_path / 'mlflow.db'}"
    server = "http://mlflow.issueops.svc:5000"
    local = Settings(home=tmp_path)
    assert isinstance(registry_lock(sqlite, local), FileLock)
    assert registry_lock(sqlite, local).directory == tmp_path / "mlflow.db.locks"
    assert registry_lock(server, local).directory == tmp_path / "locks"  # one machine, one server
    pod = Settings(home=tmp_path, in_cluster=True, namespace="ml")
    lease = registry_lock(server, pod)
    assert isinstance(lease, LeaseLock) and lease.namespace == "ml"
    assert isinstance(registry_lock(sqlite, pod), FileLock)  # a SQLite file is one machine's
    assert isinstance(registry_lock(sqlite, Settings(home=tmp_path, registry_lock="lease")), LeaseLock)
    with pytest.raises(InvalidInput, match="ISSUEOPS_REGISTRY_LOCK must be auto, file or lease"):
        registry_lock(sqlite, Settings(home=tmp_path, registry_lock="redis"))


def test_lease_names_are_valid_and_distinct():
    names = {lease_name(m) for m in ("Churn_Model", "churn-model", "churn.model", "a" * 100)}
    assert len(names) == 4
    for name in names:
        assert len(name) <= 253 and name == name.lower() and name[0].isalnum() and name[-1].isalnum()


@pytest.fixture
def api():
    with LeaseApiDouble() as double:
        yield double


def test_a_lease_excludes_other_holders_until_released(api):
    first = LeaseLock("issueops", api=api.client(), identity="pod-a")
    second = LeaseLock("issueops", api=api.client(), identity="pod-b", wait_s=0.5)
    with first.hold("churn"):
        with pytest.raises(ExternalServiceError, match=r"still in progress \(held by pod-a\)"):
            with second.hold("churn"):
                pass
        with second.hold("other"):  # one lease per model
            pass
    [lease] = [v for (_, name), v in api.leases.items() if name == lease_name("churn")]
    assert "holderIdentity" not in lease["spec"]  # released, not left to expire
    with second.hold("churn"):
        assert api.leases[("issueops", lease_name("churn"))]["spec"]["holderIdentity"] == "pod-b"


def test_a_lease_whose_holder_died_is_taken_over_after_its_duration(api):
    client = api.client()
    name = lease_name("churn")
    client.create_namespaced_lease(
        "issueops",
        {
            "metadata": {"name": name},
            "spec": {"holderIdentity": "dead-pod", "leaseDurationSeconds": 1, "leaseTransitions": 4},
        },
    )
    with LeaseLock("issueops", api=client, identity="pod-b", wait_s=30).hold("churn"):
        spec = api.leases[("issueops", name)]["spec"]
        assert spec["holderIdentity"] == "pod-b" and spec["leaseTransitions"] == 5


def test_a_held_lease_is_renewed_so_a_long_change_keeps_it(api):
    holder = LeaseLock("issueops", api=api.client(), identity="pod-a", duration_s=1)
    waiting = LeaseLock("issueops", api=api.client(), identity="pod-b", wait_s=2.5)
    outcome = []

    def contend():
        time.sleep(0.2)
        try:
            with waiting.hold("churn"):
                outcome.append("taken")
        except ExternalServiceError:
            outcome.append("refused")

    contender = threading.Thread(target=contend)
    with holder.hold("churn"):
        contender.start()
        contender.join()
    assert outcome == ["refused"]  # three lease durations passed; the renewals kept it held
    assert sum(1 for verb, _, who in api.writes if verb == "update" and who == "pod-a") >= 3


def test_the_registry_changes_nothing_when_the_lease_cannot_be_had(api, tmp_path):
    from issueops.registry.lifecycle import Registry
    from tests.test_registry import register, snapshot

    registry = Registry(
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        lock=LeaseLock("issueops", api=api.client(), identity="pod-b", wait_s=0.3),
    )
    register(registry, "churn", tmp_path)
    register(registry, "churn", tmp_path, approve=False)
    before = snapshot(registry, "churn")
    with LeaseLock("issueops", api=api.client(), identity="pod-a").hold("churn"):
        with pytest.raises(ExternalServiceError, match="Another change to model churn .*nothing was changed"):
            registry.approve("churn", 2, "alice")
    assert snapshot(registry, "churn") == before
    assert registry.approve("churn", 2, "alice").in_production
