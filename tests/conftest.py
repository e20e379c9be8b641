"""Shared fixtures: every test gets its own ISSUEOPS_HOME, so nothing leaks between tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("ISSUEOPS_RETRY_BACKOFF", "0s")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An empty ISSUEOPS_HOME with the embedded defaults (local store, SQLite MLflow, local history)."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("ISSUEOPS_HOME", str(home))
    monkeypatch.setenv("ISSUEOPS_DATA_ROOTS", os.pathsep.join([str(tmp_path), str(REPO)]))
    for name in (
        "ISSUEOPS_S3_ENDPOINT",
        "ISSUEOPS_S3_BUCKET",
        "MLFLOW_TRACKING_URI",
        "ISSUEOPS_HISTORY_REPO",
        "GITHUB_TOKEN",
        "GITHUB_REPOSITORY",
    ):
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture
def settings(home):
    from issueops.config import Settings

    return Settings.from_env()


@pytest.fixture
def store(settings):
    from issueops.store import open_store

    return open_store(settings)


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    """Endpoint of a real S3 server (SeaweedFS) shared by the session's tests."""
    from tests.s3_server import seaweedfs

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as endpoint:
        yield endpoint


@pytest.fixture
def s3_store(s3_endpoint, home, monkeypatch):
    """The run's store in a real S3 server, as a cluster's is (the job's pods upload to it)."""
    import uuid

    from issueops.config import Settings
    from issueops.store import open_store

    bucket = f"rayjob-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("ISSUEOPS_S3_ENDPOINT", s3_endpoint)
    monkeypatch.setenv("ISSUEOPS_S3_BUCKET", bucket)
    store = open_store(Settings.from_env())
    store.client.create_bucket(Bucket=bucket)
    return store


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory):
    """A real etcd + kube-apiserver + kube-controller-manager on loopback (tests/controlplane),
    built once (cached in .cluster/bin) and started for the session; `cluster` tests skip, with
    the reason, where it cannot be built or started."""
    from tests.cluster import session_control_plane

    yield from session_control_plane(tmp_path_factory.mktemp("controlplane"))


@pytest.fixture(scope="session")
def kube(control_plane):
    """The admin's ApiClient for the control plane, with the TrainingRequest CRD installed."""
    from tests.cluster import client_for, install_training_request_crd

    api = client_for(control_plane.kubeconfig)
    install_training_request_crd(api)
    yield api
    api.close()


@pytest.fixture
def namespace(kube):
    """A namespace of the test's own, deleted afterwards (the namespace controller empties it)."""
    from tests.cluster import delete_namespace, new_namespace

    name = new_namespace(kube)
    yield name
    delete_namespace(kube, name)
