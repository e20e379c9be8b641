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
