"""`kill -9` of a real `issueops run` (only that process, not its group): no task of the dead run goes
on, its record reads as interrupted (also through the MCP server's get_run), and the version it left
pending is rejected, with an audit record, the next time anything touches that model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mcp import Client

from issueops.config import Settings
from issueops.pipeline.runs import RunRecord, RunState, collect_result, run_state
from issueops.registry.lifecycle import Registry
from issueops.registry.names import PENDING, REJECTED
from issueops.results import Decision, StepStatus
from issueops.store import open_store
from tests.conftest import REPO
from tests.test_prefork import _session

MODEL = "bc-killed"


def spec(tmp_path: Path, *, manual_approval: bool = False) -> Path:
    body = tmp_path / "spec.yaml"
    body.write_text(
        "learning_type: supervised\nalgorithm: random_forest\ndataset_id: sklearn:breast_cancer\n"
        f"model_name: {MODEL}\nevaluation_threshold: 0.8\nmanual_approval: {str(manual_approval).lower()}\n"
        "hyperparameters: {n_estimators: 1500, max_depth: 4}\n"
    )
    return body


def start_run(home: Path, body: Path) -> subprocess.Popen:
    """`issueops run` as its own session, as a terminal would start it; only this process is killed."""
    return subprocess.Popen(
        [sys.executable, "-m", "issueops.cli", "run", str(body), "--json"],
        env={**os.environ, "ISSUEOPS_HOME": str(home), "ISSUEOPS_CPUS": "1"},
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def wait_for(condition, seconds: float = 300):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.01)
    raise AssertionError("timed out")


def step_status(home: Path, step: str) -> tuple[str, str] | None:
    """(run id, status of `step`) once the run has recorded that step."""
    for path in (home / "store" / "runs").glob(f"*/steps/{step}.json"):
        try:
            return path.parent.parent.name, json.loads(path.read_text())["status"]
        except (ValueError, OSError):  # being written
            return None
    return None


def kill_when(run: subprocess.Popen, home: Path, ready) -> str:
    """SIGKILL the run once `ready(home)` names its run id; then wait until none of its processes remain."""
    try:
        run_id = wait_for(lambda: run.poll() is None and ready(home))
    finally:
        run.kill()  # the run's own process: not its process group, not its session
        run.wait()
    wait_for(lambda: not _session(run.pid), seconds=30)  # every task of the run ended with it
    return run_id


def in_train(home: Path) -> str | None:
    found = step_status(home, "train")
    return found[0] if found and found[1] == "running" else None


def registered(home: Path) -> str | None:
    """The run id, once register has recorded the version and before deploy could approve it."""
    files = list((home / "store" / "runs").glob("*/registration.json"))
    return files[0].parent.name if files else None


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_kill_9_during_train_ends_the_task_and_the_record_says_interrupted(home, tmp_path):
    run = start_run(home, spec(tmp_path))
    run_id = kill_when(run, home, in_train)
    time.sleep(1)  # what a surviving task would have needed to write "done"
    store = open_store(Settings.from_env())
    record = RunRecord(store, run_id)
    assert record.read("steps/train.json")["status"] == "running"  # nobody finished it after the kill

    result = collect_result(store, run_id)
    assert result.decision == Decision.INTERRUPTED
    assert result.message.startswith(f"Run {run_id} was interrupted: the process that ran it (pid {run.pid}")
    assert "during step train" in result.message
    assert {s.name: s.status for s in result.steps}["train"] == StepStatus.INTERRUPTED
    assert run_state(store, run_id) is RunState.INTERRUPTED
    assert record.read("interrupted.json")["reason"]  # recorded, not only inferred

    from issueops.mcp_server import server

    async with Client(server) as client:
        reply = await client.call_tool("get_run", {"run_id": run_id})
    assert not reply.is_error and reply.structured_content["decision"] == Decision.INTERRUPTED


def test_kill_9_during_packaging_rejects_the_pending_version_on_next_touch(home, tmp_path):
    run = start_run(home, spec(tmp_path))
    run_id = kill_when(run, home, registered)
    store = open_store(Settings.from_env())
    assert collect_result(store, run_id).decision == Decision.INTERRUPTED  # not "pass, model_version 1"

    registry = Registry.from_settings()
    raw = registry.client.get_model_version(MODEL, "1").tags["approval_status"]
    assert raw == PENDING  # as the dead run left it
    info = registry.show(MODEL)  # the next touch resolves it
    assert [(v.version, v.status) for v in info.versions] == [(1, REJECTED)]
    assert info.production is None
    last = registry.history(MODEL)[-1]
    assert (last.action, last.to_version, last.status, last.run_id) == ("reject", 1, REJECTED, run_id)
    assert (
        f"run {run_id} ended without approving version 1" in last.reason and f"pid {run.pid}" in last.reason
    )


def test_a_version_waiting_for_manual_approval_keeps_waiting_after_its_run_died(home, tmp_path):
    run = start_run(home, spec(tmp_path, manual_approval=True))
    kill_when(run, home, registered)
    registry = Registry.from_settings()
    assert [(v.version, v.status) for v in registry.show(MODEL).versions] == [(1, PENDING)]
    assert registry.approve(MODEL, 1, "alice").in_production
