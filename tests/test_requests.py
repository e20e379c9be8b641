"""The request state machine: phases, attempts, operator input, timeouts, and the embedded store."""

from __future__ import annotations

import copy
import json
from datetime import timedelta

import pytest

from issueops.bridge.messages import question
from issueops.errors import Conflict, InvalidInput, SpecError
from issueops.lifecycle.request_store import RequestStore
from issueops.lifecycle.state_machine import (
    OperatorInput,
    Phase,
    TrainingRequest,
    apply_input,
    attempt_run_id,
    expire,
    new_request,
    operator_timeout_s,
    record_result,
    request_name,
    rolled_back,
    start_attempt,
    utcnow,
)
from issueops.results import RunResult
from issueops.spec.body import validate_spec

SPEC = {
    "learning_type": "supervised",
    "algorithm": "xgboost",
    "dataset_id": "sklearn:breast_cancer",
    "hyperparameters": {"n_estimators": 5, "max_depth": 2},
    "evaluation_threshold": 0.97,
    "max_retry": 1,
}


def request(**changes) -> TrainingRequest:
    made = new_request(validate_spec(SPEC), name="octo-org-models-7", repository="octo-org/models", issue=7)
    for key, value in changes.items():
        setattr(made, key, value)
    return made


def result(req: TrainingRequest, decision: str, value: float = 0.9) -> RunResult:
    return RunResult(
        run_id=req.run_id,
        spec=req.effective_spec.to_dict(),
        decision=decision,
        message=f"accuracy {value} vs 0.97",
        evaluation_metric="accuracy",
        threshold=0.97,
        metric_value=value,
        metrics={"accuracy": value, "f1_score": 0.91},
        attempt=req.attempt,
        model_name="bc-xgb" if decision == "pass" else None,
        model_version="4" if decision == "pass" else None,
    )


def test_an_attempt_gets_its_run_id_before_anything_runs():
    req = request()
    now = utcnow()
    run_id = start_attempt(req, now)
    assert req.phase == Phase.RUNNING and req.attempt == 1 and req.run_id == run_id
    assert req.run_handle is None  # nothing submitted yet: the id is recorded first
    assert run_id == attempt_run_id(req, 1, now)  # the same id if asked again
    assert run_id.startswith(f"train-{now:%Y%m%d-%H%M%S}-")
    assert attempt_run_id(req, 2, now) != run_id
    with pytest.raises(Conflict):
        start_attempt(req)


def test_decisions_move_the_phase():
    passed = request()
    start_attempt(passed)
    assert record_result(passed, result(passed, "pass", 0.98)) == "pass"
    assert passed.phase == Phase.SUCCEEDED and passed.model_version == "4"

    waiting = request()
    start_attempt(waiting)
    now = utcnow()
    record_result(waiting, result(waiting, "retrain"), now=now, timeout_s=3600)
    assert waiting.phase == Phase.WAITING
    assert waiting.wait_deadline == (now + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    assert waiting.attempts[0].decision == "retrain" and waiting.attempts_left == 1

    failed = request()
    start_attempt(failed)
    record_result(failed, result(failed, "fail"))
    assert failed.phase == Phase.FAILED
    rolled_back(failed, "kept version 3")
    assert failed.phase == Phase.ROLLED_BACK
    assert any(c["type"] == "RolledBack" and c["status"] == "True" for c in failed.conditions)


def test_a_result_of_another_run_is_refused():
    req = request()
    start_attempt(req)
    stale = result(req, "pass")
    stale.run_id = "train-20200101-000000-0000"
    with pytest.raises(Conflict):
        record_result(req, stale)
    assert req.phase == Phase.RUNNING


def waiting() -> TrainingRequest:
    req = request()
    start_attempt(req)
    record_result(req, result(req, "retrain"))
    return req


def test_operator_input_merges_canonical_hyperparameters_for_the_next_attempt():
    req = waiting()
    assert apply_input(req, OperatorInput("retrain", "c-1", "alice", {"eta": 0.1, "num_round": 50}))
    assert req.phase == Phase.PENDING
    assert req.adjusted_hyperparameters == {"learning_rate": 0.1, "n_estimators": 50}
    assert req.effective_spec.hyperparameters == {"n_estimators": 50, "max_depth": 2, "learning_rate": 0.1}
    start_attempt(req)
    assert req.attempt == 2 and req.attempts[1].hyperparameters["n_estimators"] == 50


def test_the_same_input_is_applied_once():
    req = waiting()
    given = OperatorInput("retrain", "c-1", "alice", {"max_depth": 4})
    assert apply_input(req, given) is True
    assert apply_input(req, given) is False
    assert req.phase == Phase.PENDING


@pytest.mark.parametrize(
    "adjusted, problem",
    [
        ({"n_estimators": 50, "kernel": "rbf"}, "'kernel' is not known for xgboost"),
        ({"max_depth": 0}, "must be >= 1"),
        ({"subsample": 0}, "must be > 0"),
        ({"n_estimators": "many"}, "must be an integer"),
    ],
)
def test_invalid_input_changes_nothing(adjusted, problem):
    req = waiting()
    before = copy.deepcopy(req)
    with pytest.raises(SpecError) as error:
        apply_input(req, OperatorInput("retrain", "c-2", "alice", adjusted))
    assert problem in str(error.value)
    assert req == before


def test_input_outside_the_wait_is_a_conflict():
    req = request()
    start_attempt(req)
    with pytest.raises(Conflict):
        apply_input(req, OperatorInput("retrain", "c-3", "alice", {"max_depth": 3}))
    assert req.phase == Phase.RUNNING


def test_cancel_stops_an_active_request_only():
    req = waiting()
    apply_input(req, OperatorInput("cancel", "c-4", "bob"))
    assert req.phase == Phase.CANCELLED and "bob" in req.message
    with pytest.raises(Conflict):
        apply_input(req, OperatorInput("cancel", "c-5", "bob"))


def test_the_wait_times_out_into_failed():
    req = waiting()
    deadline = req.wait_deadline
    assert not expire(req, utcnow())
    assert expire(req, utcnow() + timedelta(hours=25))
    assert req.phase == Phase.FAILED and deadline in req.message
    assert not expire(req, utcnow() + timedelta(hours=50))  # once


@pytest.mark.parametrize(
    "raw, seconds",
    [("", 86400), ("3600", 3600), ("90m", 5400), ("24h", 86400), ("2d", 172800), ("1.5h", 5400)],
)
def test_operator_timeout_setting(raw, seconds):
    assert operator_timeout_s({"ISSUEOPS_OPERATOR_TIMEOUT": raw}) == seconds


@pytest.mark.parametrize("raw", ["soon", "-5", "1w", "h"])
def test_operator_timeout_setting_rejects_nonsense(raw):
    with pytest.raises(InvalidInput):
        operator_timeout_s({"ISSUEOPS_OPERATOR_TIMEOUT": raw})


def test_request_names_are_dns_labels():
    assert request_name("Octo-Org/My_Models", 12) == "octo-org-my-models-12"
    assert request_name("o/r", 3, generation=2) == "o-r-3-2"
    long = request_name("a" * 60 + "/" + "b" * 60, 123456, generation=3)
    assert len(long) <= 63 and long.endswith("-3") and long[0].isalnum()


def test_the_store_survives_a_restart_and_finds_the_latest_request(home):
    store = RequestStore(home)
    first = store.save(request())
    second = request(name=store.next_name("octo-org/models", 7))
    start_attempt(second)
    store.save(second)
    again = RequestStore(home)  # a new process
    assert again.for_issue("octo-org/models", 7) == second
    assert again.load(first.name) == first
    assert [r.name for r in again.active()] == [first.name, second.name]
    assert again.for_issue("octo-org/models", 8) is None
    assert not list((home / "requests").glob(".*.tmp"))


def test_editing_saves_only_when_the_change_succeeds(home):
    store = RequestStore(home)
    store.save(waiting())
    with pytest.raises(SpecError), store.editing("octo-org-models-7") as req:
        apply_input(req, OperatorInput("retrain", "c-1", "a", {"nope": 1}))
    assert store.load("octo-org-models-7").phase == Phase.WAITING
    with store.editing("octo-org-models-7") as req:
        apply_input(req, OperatorInput("retrain", "c-2", "a", {"max_depth": 5}))
    assert store.load("octo-org-models-7").phase == Phase.PENDING


def test_a_request_round_trips_through_a_resource_status():
    req = waiting()
    apply_input(req, OperatorInput("retrain", "c-1", "alice", {"max_depth": 6}))
    spec = {k: v for k, v in req.spec.to_dict().items() if v is not None}
    body = {
        "metadata": {"name": req.name, "uid": "k8s-uid", "creationTimestamp": req.created_at},
        "spec": {**spec, "issue": {"repository": "octo-org/models", "number": 7}},
        "status": json.loads(json.dumps(req.status())),
    }
    again = TrainingRequest.from_resource(body)
    for field in ("phase", "attempt", "run_id", "uid", "adjusted_hyperparameters", "issue", "repository"):
        assert getattr(again, field) == getattr(req, field), field
    assert again.effective_spec == req.effective_spec
    assert [a.decision for a in again.attempts] == ["retrain"]


def test_an_invalid_resource_spec_is_invalid_input():
    with pytest.raises(SpecError):
        TrainingRequest.from_resource({"metadata": {"name": "x"}, "spec": {**SPEC, "max_retry": 42}})


def test_the_question_shows_metrics_threshold_what_can_change_and_an_example():
    req = waiting()
    text = question(req, result(req, "retrain", 0.9), timeout_s=7200)
    assert "| **accuracy** | **0.9** | >= 0.97 |" in text
    assert "| f1_score | 0.91 | |" in text
    assert "`learning_rate`" in text and "`subsample`" in text  # what can be adjusted
    assert "adjusted_hyperparameters:\n  n_estimators: 10\n  max_depth: 4" in text  # an example
    assert "1 attempt left" in text and "within 2 h" in text and req.wait_deadline in text


@pytest.mark.parametrize(
    "seconds, said",
    [(40, "within 40 s"), (90, "within 1 min 30 s"), (2400, "within 40 min"), (86400, "within 24 h")],
)
def test_the_question_says_the_timeout_as_a_person_would(seconds, said):
    req = waiting()
    assert said in question(req, result(req, "retrain"), timeout_s=seconds)


def test_a_metric_reads_the_same_in_tables_in_text_and_in_notifications():
    from issueops.evaluation.judge import judge
    from issueops.reporting.notify.messages import Notification, render_text
    from issueops.reporting.status import render_status

    verdict = judge("accuracy", 1.0, 0.9, attempt=1, max_retry=0)
    assert verdict.message == "accuracy 1 meets the threshold (>= 0.9)."
    req = waiting()
    done = result(req, "pass", 1.0)
    done.message, done.threshold = verdict.message, 0.9
    assert "| accuracy | 0.9 | 1 | ✅ pass |" in render_status("t", [], result=done)
    assert "accuracy  1 (threshold 0.9)" in render_text(Notification.from_result(done))
    assert "1.0000" not in render_text(Notification.from_result(done)) + question(req, done, timeout_s=60)


def test_hyperparameter_ranges_are_shown_as_typed():
    from issueops.spec.catalog import ALGORITHMS

    assert ALGORITHMS["random_forest"].param("random_state").describe() == "int >= 0 and <= 2147483647"
    assert ALGORITHMS["xgboost"].param("gamma").describe() == "float >= 0 and <= 1000000"
    assert ALGORITHMS["xgboost"].param("subsample").describe() == "float > 0 and <= 1"
