"""The registry against real MLflow on SQLite: versions, approval, production alias, rollback, audit."""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import pytest

from issueops.errors import Conflict, InvalidInput, NotFound
from issueops.registry.lifecycle import Registry
from issueops.registry.names import (
    APPROVED,
    ARCHIVED,
    PENDING,
    PRODUCTION,
    REJECTED,
    model_name_for,
    spec_hash,
)
from issueops.results import RunResult, StepTiming

SPEC = {
    "learning_type": "supervised",
    "task_type": "classification",
    "algorithm": "random_forest",
    "dataset_id": "sklearn:breast_cancer",
    "evaluation_metric": "accuracy",
    "evaluation_threshold": 0.85,
    "hyperparameters": {"n_estimators": 100, "max_depth": 10},
    "max_retry": 3,
}
_counter = itertools.count(1)


@pytest.fixture(scope="module")
def mlflow_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mlflow")


@pytest.fixture(scope="module")
def registry(mlflow_dir) -> Registry:
    """One SQLite store for the module (creating it is the slow part); each test uses its own models."""
    return Registry(f"sqlite:///{mlflow_dir / 'mlflow.db'}")


@pytest.fixture
def model(request) -> str:
    return f"m{next(_counter)}-{request.node.name[5:30].replace('_', '-')}".strip("-")


def result_for(
    model: str, *, accuracy: float = 0.9, issue: int = 1, decision: str = "pass", tmp: Path | None = None
) -> RunResult:
    run_id = f"train-20260101-000000-{next(_counter):04x}"
    artifacts = {}
    if tmp is not None:
        model_dir = tmp / run_id / "model"
        model_dir.mkdir(parents=True)
        (model_dir / "model.json").write_text(json.dumps({"run_id": run_id}))
        artifacts["model"] = str(model_dir)
    return RunResult(
        run_id=run_id,
        spec={**SPEC, "model_name": model},
        decision=decision,
        message=f"accuracy {accuracy}",
        evaluation_metric="accuracy",
        threshold=0.85,
        metric_value=accuracy,
        metrics={"accuracy": accuracy, "f1": accuracy - 0.01, "confusion": {"tp": 3}, "label": "x"},
        data_summary={"dataset_id": "sklearn:breast_cancer", "rows": 569},
        artifacts=artifacts,
        issue=issue,
        repository="acme/models",
        steps=[StepTiming("train", "done", 1.5)],
    )


def register(registry: Registry, model: str, tmp: Path, *, approve: bool = True, **kwargs):
    result = result_for(model, tmp=tmp, **kwargs)
    mlflow_run = registry.log_run(result, None)
    info = registry.register_version(
        model, result, mlflow_run, Path(result.artifacts["model"]), approve=approve, actor="ci"
    )
    return result, info


def statuses(registry: Registry, model: str) -> dict[int, str]:
    return {v.version: v.status for v in registry.show(model).versions}


def snapshot(registry: Registry, model: str) -> tuple:
    rm = registry.client.get_registered_model(model)
    versions = registry.client.search_model_versions(f"name = '{model}'")
    return dict(rm.aliases), dict(rm.tags), {v.version: dict(v.tags) for v in versions}


def test_model_name_comes_from_spec_or_dataset_and_algorithm():
    assert model_name_for(SPEC) == "breast-cancer-random-forest"
    assert model_name_for({"dataset_id": "s3://bucket/data/Churn Data.csv.gz", "algorithm": "xgboost"}) == (
        "churn-data-xgboost"
    )
    assert model_name_for({"environment": "CartPole-v1", "algorithm": "ppo"}) == "cartpole-v1-ppo"
    assert model_name_for({**SPEC, "model_name": "churn"}) == "churn"
    with pytest.raises(InvalidInput):
        model_name_for({**SPEC, "model_name": "../etc"})


def test_spec_hash_is_canonical():
    reordered = dict(reversed(list(SPEC.items())))
    assert spec_hash(reordered) == spec_hash(SPEC)
    changed = {**SPEC, "hyperparameters": {"n_estimators": 101, "max_depth": 10}}
    assert spec_hash(changed) != spec_hash(SPEC)


def test_log_run_records_the_attempt_once(registry, model, tmp_path):
    result = result_for(model, tmp=tmp_path)
    plot = tmp_path / "confusion_matrix.png"
    plot.write_bytes(b"png")
    result.artifacts["confusion_matrix.png"] = str(plot)
    result.artifacts["processed"] = str(tmp_path)  # data stays in the store, not in MLflow
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "notes.txt").write_text("hello")

    first = registry.log_run(result, extra)
    assert registry.log_run(result, extra) == first

    run = registry.client.get_run(first)
    assert run.info.status == "FINISHED"
    assert run.data.params["n_estimators"] == "100"
    assert run.data.params["algorithm"] == "random_forest"
    assert run.data.metrics["accuracy"] == pytest.approx(0.9)
    assert run.data.metrics["confusion.tp"] == 3
    assert run.data.metrics["step.train.seconds"] == 1.5
    assert "label" not in run.data.metrics
    assert run.data.tags["issueops.run_id"] == result.run_id
    assert run.data.tags["issueops.issue"] == "1"
    assert run.data.tags["issueops.decision"] == "pass"
    assert run.data.tags["issueops.spec_hash"] == spec_hash(result.spec)
    assert run.data.tags["issueops.dataset"] == "sklearn:breast_cancer"
    top = {a.path for a in registry.client.list_artifacts(first)}
    assert top == {"model", "evaluation", "data_summary.json", "result.json", "notes.txt"}
    assert [a.path for a in registry.client.list_artifacts(first, "evaluation")] == [
        "evaluation/confusion_matrix.png"
    ]
    assert (
        registry.client.search_runs(
            [run.info.experiment_id], f"tags.`issueops.run_id` = '{result.run_id}'"
        ).__len__()
        == 1
    )
    # Artifacts sit beside the SQLite database, not in the working directory.
    assert run.info.artifact_uri.startswith(Path(registry.artifact_location[len("file://") :]).as_uri())


def test_real_sklearn_model_round_trip(registry, model, tmp_path):
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from issueops.training.train import load_model

    X, y = load_iris(return_X_y=True)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=200)).fit(X, y)
    result = result_for(model, tmp=tmp_path)
    model_dir = Path(result.artifacts["model"])
    joblib.dump(pipeline, model_dir / "model.joblib")
    (model_dir / "model.json").write_text(json.dumps({"format": "sklearn-pipeline", "file": "model.joblib"}))

    mlflow_run = registry.log_run(result, None)
    info = registry.register_version(model, result, mlflow_run, model_dir, approve=True, actor="ci")
    assert info.in_production and info.status == APPROVED
    assert info.metrics["accuracy"] == pytest.approx(0.9)
    assert info.spec_hash == spec_hash(result.spec) and info.issue == 1 and info.run_id == result.run_id

    local = registry.download(model, PRODUCTION, tmp_path / "served")
    assert (load_model(local).predict(X[:10]) == pipeline.predict(X[:10])).all()


def test_auto_approve_moves_production_and_archives_previous(registry, model, tmp_path):
    _, first = register(registry, model, tmp_path)
    assert registry.production(model).version == first.version == 1
    _, second = register(registry, model, tmp_path, accuracy=0.95, issue=2)
    assert registry.production(model).version == second.version == 2
    assert statuses(registry, model) == {1: ARCHIVED, 2: APPROVED}
    assert registry.show(model).versions[0].aliases == [PRODUCTION]


def test_production_versions_follow_approvals_and_rollbacks(registry, model, tmp_path):
    assert model not in registry.production_versions()
    register(registry, model, tmp_path)
    register(registry, model, tmp_path, approve=False, issue=2)
    assert registry.production_versions()[model] == 1  # a pending version is not production
    registry.approve(model, "2", "alice")
    assert registry.production_versions()[model] == 2
    registry.rollback_production(model, reason="worse", actor="bob")
    assert registry.production_versions()[model] == 1


def test_manual_approval_waits_and_approve_promotes(registry, model, tmp_path):
    register(registry, model, tmp_path)
    _, pending = register(registry, model, tmp_path, approve=False, issue=2)
    assert pending.status == PENDING and not pending.in_production
    assert registry.production(model).version == 1
    assert statuses(registry, model) == {1: APPROVED, 2: PENDING}

    approved = registry.approve(model, "2", "alice", "looks good")
    assert approved.in_production and approved.status == APPROVED
    assert statuses(registry, model) == {1: ARCHIVED, 2: APPROVED}
    with pytest.raises(Conflict, match="rollback"):
        registry.approve(model, 1, "alice")


def test_register_twice_for_the_same_run_gives_one_version(registry, model, tmp_path):
    result, info = register(registry, model, tmp_path)
    mlflow_run = registry.log_run(result, None)
    again = registry.register_version(
        model, result, mlflow_run, Path(result.artifacts["model"]), approve=True, actor="ci"
    )
    assert again.version == info.version
    assert len(registry.show(model).versions) == 1
    assert [r.action for r in registry.history(model)] == ["register", "approve", "promote"]


def test_rollback_goes_back_along_the_production_timeline(registry, model, tmp_path):
    for issue in (1, 2, 3):
        register(registry, model, tmp_path, issue=issue)
    result = registry.rollback_production(model, reason="bad predictions", actor="bob")
    assert (result.from_version, result.to_version, result.changed) == (3, 2, True)
    assert statuses(registry, model) == {1: ARCHIVED, 2: APPROVED, 3: ARCHIVED}
    # The next rollback continues to 1; it does not bounce back to the version just left.
    assert registry.rollback_production(model, reason="still bad", actor="bob").to_version == 1
    assert registry.production(model).version == 1


def test_rollback_to_a_named_version(registry, model, tmp_path):
    for issue in (1, 2, 3):
        register(registry, model, tmp_path, issue=issue)
    result = registry.rollback_production(model, "1", reason="back to the known good one", actor="bob")
    assert (result.from_version, result.to_version) == (3, 1)
    assert registry.production(model).version == 1
    assert statuses(registry, model) == {1: APPROVED, 2: ARCHIVED, 3: ARCHIVED}


def test_rollback_without_earlier_version_is_refused_and_changes_nothing(registry, model, tmp_path):
    register(registry, model, tmp_path)
    register(registry, model, tmp_path, approve=False)  # pending, never in production
    before = snapshot(registry, model)
    with pytest.raises(Conflict, match="no earlier production version.*version 1 stays"):
        registry.rollback_production(model, reason="x", actor="bob")
    with pytest.raises(Conflict, match="never been in production"):
        registry.rollback_production(model, 2, reason="x", actor="bob")
    with pytest.raises(Conflict, match="already in production"):
        registry.rollback_production(model, 1, reason="x", actor="bob")
    assert snapshot(registry, model) == before


def test_rollback_to_missing_foreign_or_rejected_version_is_refused(registry, model, tmp_path):
    register(registry, model, tmp_path)
    register(registry, model, tmp_path)
    register(registry, model, tmp_path)
    registry.reject(model, 1, "bob", "leaks labels")
    other = f"{model}-other"
    register(registry, other, tmp_path)
    before = snapshot(registry, model)
    with pytest.raises(NotFound, match=f"{model} has no version 7"):
        registry.rollback_production(model, 7, reason="x", actor="bob")
    with pytest.raises(InvalidInput, match=f"belongs to model {other}"):
        registry.rollback_production(model, f"{other}/1", reason="x", actor="bob")
    with pytest.raises(Conflict, match="Rejected"):
        registry.rollback_production(model, 1, reason="x", actor="bob")
    with pytest.raises(NotFound, match="no registered model"):
        registry.rollback_production("no-such-model", reason="x", actor="bob")
    assert snapshot(registry, model) == before
    # The default rollback skips the rejected version 1 and lands on 2.
    assert registry.rollback_production(model, reason="x", actor="bob").to_version == 2


def test_production_version_cannot_be_archived_or_rejected(registry, model, tmp_path):
    register(registry, model, tmp_path)
    before = snapshot(registry, model)
    for action in (registry.archive, registry.reject):
        with pytest.raises(Conflict, match="in production; approve a replacement or roll back"):
            action(model, 1, "bob")
    assert snapshot(registry, model) == before


def test_failed_request_that_changed_nothing_keeps_production(registry, model, tmp_path):
    register(registry, model, tmp_path, issue=1)
    register(registry, model, tmp_path, issue=2)
    failed = result_for(model, accuracy=0.4, issue=3, decision="fail", tmp=tmp_path)
    registry.log_run(failed, None)
    before = snapshot(registry, model)

    outcome = registry.rollback_request(model, failed.run_id, reason="attempts exhausted", actor="operator")
    assert (outcome.changed, outcome.from_version, outcome.to_version) == (False, 2, 2)
    assert "Kept version 2" in outcome.message
    assert registry.production(model).version == 2
    assert snapshot(registry, model) == before
    assert registry.rollback_request(f"{model}-never", failed.run_id, actor="operator").changed is False


def test_failed_request_rolls_back_only_its_own_promotion(registry, model, tmp_path):
    register(registry, model, tmp_path, issue=1)
    result, info = register(registry, model, tmp_path, issue=2)  # promoted, then e.g. deploy failed
    assert registry.production(model).version == info.version == 2

    outcome = registry.rollback_request(model, result.run_id, reason="deploy failed", actor="operator")
    assert (outcome.changed, outcome.from_version, outcome.to_version) == (True, 2, 1)
    assert outcome.rejected == [2]
    assert registry.production(model).version == 1
    assert statuses(registry, model) == {1: APPROVED, 2: REJECTED}
    again = registry.rollback_request(model, result.run_id, reason="retry", actor="operator")
    assert again.changed is False and registry.production(model).version == 1


def test_audit_trail_shows_every_move_in_order(registry, model, tmp_path):
    r1, _ = register(registry, model, tmp_path)
    r2, _ = register(registry, model, tmp_path, approve=False)
    registry.approve(model, 2, "alice", "reviewed")
    registry.rollback_production(model, reason="latency regression", actor="bob")
    moves = [(r.action, r.from_version, r.to_version, r.status) for r in registry.history(model)]
    assert moves == [
        ("register", None, 1, PENDING),
        ("approve", None, 1, APPROVED),
        ("promote", None, 1, None),
        ("register", None, 2, PENDING),
        ("approve", None, 2, APPROVED),
        ("promote", 1, 2, None),
        ("archive", None, 1, ARCHIVED),
        ("rollback", 2, 1, APPROVED),
        ("archive", None, 2, ARCHIVED),
    ]
    records = registry.history(model)
    assert records[0].run_id == r1.run_id and records[4].run_id == r2.run_id
    assert records[4].actor == "alice" and records[4].reason == "reviewed"
    assert records[-2].actor == "bob" and records[-2].reason == "latency regression"
    assert all(r.time.endswith("+00:00") for r in records)
    assert [r.time for r in records] == sorted(r.time for r in records)
    # Stored in MLflow itself, one registered-model tag per event.
    tags = registry.client.get_registered_model(model).tags
    assert sum(k.startswith("audit.") for k in tags) == len(records)


def _cli(registry, monkeypatch, capsys, *argv) -> tuple[int, str, str]:
    from issueops.cli.registry import add_registry_parser, run_registry_command

    parser = argparse.ArgumentParser(prog="issueops")
    add_registry_parser(parser.add_subparsers(dest="command"))
    monkeypatch.setenv("ISSUEOPS_ACTOR", "carol")
    args = parser.parse_args(["registry", *argv])
    assert args.handler is run_registry_command
    code = run_registry_command(args, registry)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_actions_and_exit_codes(registry, model, tmp_path, monkeypatch, capsys):
    register(registry, model, tmp_path)
    register(registry, model, tmp_path, approve=False)

    code, out, _ = _cli(registry, monkeypatch, capsys, "list", "--json")
    assert (
        code == 0
        and {"name": model, "production": 1, "latest_version": 2, "versions": 2}.items()
        <= next(m for m in json.loads(out) if m["name"] == model).items()
    )
    code, out, _ = _cli(registry, monkeypatch, capsys, "show", model)
    assert code == 0 and PENDING in out and "production" in out
    code, out, _ = _cli(registry, monkeypatch, capsys, "approve", model, "2", "--reason", "ok", "--json")
    assert code == 0 and json.loads(out)["aliases"] == [PRODUCTION]
    code, out, _ = _cli(registry, monkeypatch, capsys, "rollback", model, "--reason", "oops")
    assert code == 0 and "from version 2 to version 1" in out
    code, out, _ = _cli(registry, monkeypatch, capsys, "archive", model, "2", "--json")
    assert code == 0 and json.loads(out)["status"] == ARCHIVED
    code, out, _ = _cli(registry, monkeypatch, capsys, "history", model, "--json")
    history = json.loads(out)
    assert code == 0 and history[-1]["action"] == "archive" and history[-1]["actor"] == "carol"
    code, out, _ = _cli(registry, monkeypatch, capsys, "history", model)
    assert "rollback 2 -> 1" in out and "by carol" in out

    code, out, err = _cli(registry, monkeypatch, capsys, "rollback", model, "--to", "9")
    assert (code, out) == (2, "") and err.strip() == f"Model {model} has no version 9."
    code, _, err = _cli(registry, monkeypatch, capsys, "archive", model, "1")
    assert code == 2 and "in production" in err and "Traceback" not in err
    code, _, err = _cli(registry, monkeypatch, capsys, "show", "nope")
    assert code == 2 and err.strip() == "There is no registered model named 'nope'."


def test_cli_reads_the_tracking_uri_from_the_environment(registry, model, tmp_path, monkeypatch, capsys):
    register(registry, model, tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry.tracking_uri)
    code, out, _ = _cli(None, monkeypatch, capsys, "show", model, "--json")
    assert code == 0 and json.loads(out)["production"] == 1


def test_mlflow_failures_become_short_issueops_errors(registry, model, tmp_path):
    result = result_for(model, tmp=tmp_path)
    with pytest.raises(NotFound, match="Could not register the model version"):
        registry.register_version(
            model, result, "0" * 32, Path(result.artifacts["model"]), approve=True, actor="ci"
        )
    result.artifacts.pop("model")
    mlflow_run = registry.log_run(result, None)
    with pytest.raises(InvalidInput, match="holds no model"):
        registry.register_version(model, result, mlflow_run, tmp_path / "missing", approve=True, actor="ci")
    register(registry, model, tmp_path)
    with pytest.raises(NotFound, match="no version with the alias 'staging'"):
        registry.download(model, "staging", tmp_path / "dl")
