"""The run record: step states, errors, retries of bad input, and the step timeout."""

import logging
import os
import time
from pathlib import Path

import pytest

from issueops.errors import Conflict, DatasetError, ExternalServiceError, InvalidInput, NotFound
from issueops.pipeline.policy import STEP_POLICIES, StepPolicy
from issueops.pipeline.runs import RunRecord, StepTimeout, collect_result, new_run_id, step_guard


def test_run_ids_follow_the_seed_and_never_collide():
    ids = {new_run_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(i.startswith("train-") and len(i.split("-")) == 4 for i in ids)


def test_step_guard_records_done_and_failed(store):
    with step_guard(store, "run-1", "prepare_data"):
        pass
    with pytest.raises(RuntimeError), step_guard(store, "run-1", "train"):
        raise RuntimeError("disk full")
    record = RunRecord(store, "run-1")
    assert [(s.name, s.status) for s in record.steps()] == [("prepare_data", "done"), ("train", "failed")]
    assert record.error()["problems"] == ["RuntimeError: disk full"]


def test_a_step_logs_at_the_level_the_settings_ask(store, monkeypatch, caplog):
    root = logging.getLogger()
    monkeypatch.setattr(root, "level", root.level)  # put back after the test
    monkeypatch.setenv("ISSUEOPS_LOG_LEVEL", "WARNING")
    with step_guard(store, "run-4", "prepare_data"):
        logging.getLogger("issueops.pipeline").info("reading the dataset")
    assert [r.levelname for r in caplog.records if r.levelno < logging.WARNING] == []


def test_a_retry_of_bad_input_fails_at_once_with_the_same_reason(store):
    calls = []
    for _ in range(3):
        with pytest.raises(InvalidInput, match="3 usable rows"), step_guard(store, "run-2", "prepare_data"):
            calls.append(1)
            raise DatasetError("the dataset has 3 usable rows; at least 20 are needed.")
    assert calls == [1]  # the work ran once; the retries did not repeat it


def test_a_not_found_in_a_step_is_recorded_as_not_found_and_retried(store):
    calls = []
    for _ in range(3):
        with pytest.raises(NotFound, match="no version 7"), step_guard(store, "run-8", "deploy"):
            calls.append(1)
            raise NotFound("Model iris has no version 7.")
    assert calls == [1, 1, 1]  # each retry ran the step again: the version may yet appear
    error = RunRecord(store, "run-8").error()
    assert (error["kind"], error["exit_code"], error["retry"]) == ("NotFound", 2, True)


def test_a_retry_of_a_conflict_fails_at_once_as_a_conflict(store):
    calls = []
    for _ in range(2):
        with (
            pytest.raises(Conflict, match="is in production") as raised,
            step_guard(store, "run-9", "promote"),
        ):
            calls.append(1)
            raise Conflict("Version 2 of iris is in production.")
        assert not isinstance(raised.value, InvalidInput)
    assert calls == [1]


def test_a_finished_run_reports_a_step_s_not_found_as_not_found(tmp_path):
    from issueops.pipeline.execution import run_failure

    error = {
        "step": "deploy",
        "kind": "NotFound",
        "lineage": ["NotFound", "IssueOpsError"],
        "exit_code": 2,
        "retry": True,
        "problems": ["Model iris has no version 7."],
    }
    failure = run_failure("run-10", error, "error", tmp_path / "run.log")
    assert type(failure) is NotFound and failure.problems == ["Model iris has no version 7."]
    assert failure.exit_code == 2  # what `issueops run` exits with


def test_a_failed_step_of_a_kind_this_process_never_loaded_is_rebuilt_as_its_nearest_kind(tmp_path):
    from issueops.pipeline.execution import run_failure

    error = {
        "step": "package",
        "kind": "SomeoneElsesConflict",
        "lineage": ["SomeoneElsesConflict", "Conflict", "IssueOpsError"],
        "retry": False,
        "problems": ["The model cannot be served."],
    }
    assert type(run_failure("run-11", error, "error", tmp_path / "run.log")) is Conflict


def test_a_failed_step_of_ours_is_told_with_its_run_step_and_log(tmp_path):
    from issueops.pipeline.execution import run_failure

    error = {"step": "train", "kind": "RuntimeError", "retry": True, "problems": ["RuntimeError: disk full"]}
    failure = run_failure("run-12", error, "error", tmp_path / "run.log")
    assert type(failure) is ExternalServiceError
    assert (
        str(failure)
        == f"Run run-12 failed in step train: RuntimeError: disk full (log: {tmp_path / 'run.log'})."
    )


def test_step_timeout_is_enforced_locally(store, monkeypatch):
    monkeypatch.setitem(STEP_POLICIES, "judge", StepPolicy(timeout_s=1, retries=0))
    started = time.monotonic()
    with pytest.raises(StepTimeout, match="1-second limit"), step_guard(store, "run-3", "judge"):
        time.sleep(5)
    assert time.monotonic() - started < 3


def test_collect_result_from_an_empty_record(store):
    result = collect_result(store, "run-4")
    assert result.decision == "unknown" and result.steps == []


def test_training_progress_reaches_the_console_and_the_status_comment(store):
    from issueops.pipeline.execution import _StepWatcher
    from issueops.reporting.status import StatusReport, render_step

    record = RunRecord(store, "run-5")
    seen = []
    watcher = _StepWatcher(record, seen.append)
    record.write("steps/train.json", {"name": "train", "status": "running"})
    record.write("progress.json", {"iteration": 3, "episode_return_mean": 45.25, "elapsed_s": 12.0})
    watcher.poll()
    watcher.poll()  # the same iteration is reported once
    assert [s.status for s in seen] == ["running", "running: iteration 3, return 45.2"]
    shown = []

    class Sink:
        def show(self, body, *, event):
            shown.append(body)

    report = StatusReport(Sink(), "Training ppo", ["train"])
    report.step_progress("train", "iteration 3, return 45.2")
    assert "- [ ] train — iteration 3, return 45.2" in shown[-1]
    assert render_step(seen[1]) == "- [ ] train — iteration 3, return 45.2"


def test_a_run_reads_as_running_finished_or_interrupted_from_its_owner_process(store):
    import socket
    import subprocess

    from issueops.pipeline.runs import RunOwner, RunState, mark_finished, mark_owner, run_state
    from issueops.results import Decision, StepStatus

    assert run_state(store, "run-6") is RunState.UNKNOWN  # no owner recorded: a cluster run
    mark_owner(store, "run-6")
    assert run_state(store, "run-6") is RunState.RUNNING  # this process
    mark_finished(store, "run-6")
    assert run_state(store, "run-6") is RunState.FINISHED

    child = subprocess.Popen(["sleep", "60"])
    me = RunOwner.current()
    started = int(Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    owner = RunOwner(me.host, me.boot_id, child.pid, started)
    assert owner.alive() is True
    mark_owner(store, "run-7", owner)
    with step_guard(store, "run-7", "prepare_data"):
        pass
    RunRecord(store, "run-7").write("steps/train.json", {"name": "train", "status": "running"})
    child.kill()
    child.wait()
    assert owner.alive() is False
    assert run_state(store, "run-7") is RunState.INTERRUPTED
    result = collect_result(store, "run-7")
    assert result.decision == Decision.INTERRUPTED and "during step train" in result.message
    assert [(s.name, s.status) for s in result.steps] == [
        ("prepare_data", "done"),
        ("train", StepStatus.INTERRUPTED),
    ]

    reused = RunOwner(owner.host, owner.boot_id, os.getpid(), owner.started)  # a pid used again later
    assert reused.alive() is False
    elsewhere = RunOwner(socket.gethostname() + "-other", owner.boot_id, child.pid, owner.started)
    mark_owner(store, "run-8", elsewhere)
    assert run_state(store, "run-8") is RunState.UNKNOWN  # another machine's process: cannot tell
