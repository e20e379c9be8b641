"""`issueops monitor drift | feedback | performance` against real MLflow (SQLite) and the local store:
exit codes and the sentences a user reads."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from issueops.cli import main
from issueops.monitoring.payload_logger import PayloadLogger
from issueops.monitoring.payloads import v2_tensors
from issueops.monitoring.profile import build_reference_profile, save_reference_profile
from issueops.registry.lifecycle import Registry
from issueops.results import RunResult

_counter = itertools.count(1)
COLUMNS = {"input": ["age", "income"], "categorical": ["plan"]}


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory) -> str:
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    Registry(uri)  # creating the database is the slow part: once per module
    return uri


@pytest.fixture
def env(home, tracking_uri, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    from issueops.config import Settings
    from issueops.store import open_store

    return open_store(Settings.from_env())


def features(rows: int, seed: int, shift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "age": rng.normal(40 + shift, 8, rows),
            "income": rng.gamma(3, 1000, rows),
            "plan": rng.choice(["basic", "plus", "pro"], rows, p=[0.6, 0.3, 0.1]).astype(object),
        }
    )


def register(tracking_uri: str, tmp_path: Path, store) -> str:
    """A production version 1 (accuracy 0.9 at registration) with its reference profile."""
    model = f"churn-{next(_counter)}"
    registry = Registry(tracking_uri)
    model_dir = tmp_path / "model"
    model_dir.mkdir(exist_ok=True)
    (model_dir / "model.json").write_text("{}")
    result = RunResult(
        run_id=f"train-20260301-000000-{next(_counter):04x}",
        spec={"learning_type": "supervised", "task_type": "classification", "model_name": model},
        decision="pass",
        message="accuracy 0.9",
        evaluation_metric="accuracy",
        threshold=0.8,
        metric_value=0.9,
        metrics={"accuracy": 0.9, "f1_score": 0.88},
    )
    registry.register_version(model, result, registry.log_run(result), model_dir, approve=True, actor="ci")
    rng = np.random.default_rng(1)
    proba = rng.dirichlet([1, 1], 300)
    profile = build_reference_profile(
        features(900, 0),
        feature_columns=COLUMNS,
        task_type="classification",
        test_outputs={"label": proba.argmax(1), "probabilities": proba},
        test_labels=(rng.random(300) < proba[:, 1]).astype(int),
        classes=["stay", "leave"],
        evaluation_metric="accuracy",
        metric_value=0.9,
    )
    save_reference_profile(store, profile, model, 1)
    return model


def serve(store, model: str, rows: pd.DataFrame, *, first: int = 0, always: int | None = None) -> None:
    """Log one request per row as `issueops serve` will (ids r<first>, r<first+1>, ...)."""
    logger = PayloadLogger(store)
    rng = np.random.default_rng(first)
    for i, row in enumerate(rows.itertuples(index=False)):
        proba = rng.dirichlet([1, 1], 1).astype(np.float32)
        label = proba.argmax(1) if always is None else np.array([always])
        request = {
            "inputs": v2_tensors(
                {
                    "input": np.array([[row.age, row.income]], dtype=np.float32),
                    "categorical": np.array([[row.plan]], dtype=object),
                }
            )
        }
        response = {"outputs": v2_tensors({"label": label, "probabilities": proba})}
        logger.log(model, 1, request, response, request_id=f"r{first + i}")
    logger.close()


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["monitor", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_model_never_served_is_one_sentence_and_exit_2(env, tracking_uri, tmp_path, capsys):
    assert run(capsys, "drift", "ghost") == (
        2,
        "",
        "Model ghost has never been served: no inference logs under monitoring/ghost/.\n",
    )
    model = register(tracking_uri, tmp_path, env)
    code, out, err = run(capsys, "performance", model)
    assert (
        code == 2
        and err
        == f"Version 1 of {model} has never been served: no inference logs under monitoring/{model}/1/.\n"
    )


def test_drift_refuses_a_small_window_then_reports_drift(env, tracking_uri, tmp_path, capsys):
    model = register(tracking_uri, tmp_path, env)
    serve(env, model, features(60, 1, shift=15))
    code, out, err = run(capsys, "drift", model)
    assert code == 2 and out == ""
    assert err == (
        f"The window holds 60 logged row(s) of {model} version 1; a drift check needs at least 100: "
        "widen --since or wait for more traffic.\n"
    )
    serve(env, model, features(240, 2, shift=15), first=60)
    code, out, err = run(capsys, "drift", model, "--json", "--plots", str(tmp_path / "plots"))
    assert code == 0, err
    report = json.loads(out)
    assert (report["model"], report["version"], report["rows"]) == (model, 1, 300)
    assert report["drift"] is False and report["drift_share"] == pytest.approx(1 / 3)
    assert [(f["name"], f["test"], f["drift"]) for f in report["features"]] == [
        ("age", "ks", True),
        ("income", "ks", False),
        ("plan", "chisquare", False),
    ]
    assert {"statistic", "p_value", "distance", "threshold"} <= set(report["features"][0])
    assert len(list((tmp_path / "plots").glob("*.png"))) == 4  # three features and the predictions

    code, out, _ = run(capsys, "drift", model, "--since", "2020-01-01")
    assert code == 0 and out.startswith(f"{model} version 1: no drift in 300 rows: 1 of 3 features drift")
    assert run(capsys, "drift", model, "--since", "yesterday")[0] == 2


def test_feedback_then_performance_measured_and_estimated(env, tracking_uri, tmp_path, capsys):
    model = register(tracking_uri, tmp_path, env)
    serve(env, model, features(150, 3), always=1)  # always "leave"
    code, out, err = run(capsys, "performance", model, "--json")
    assert code == 0, err
    estimate = json.loads(out)
    assert (
        estimate["estimated"] is True and estimate["metric"] == "accuracy" and estimate["registered"] == 0.9
    )

    labels = tmp_path / "labels.csv"
    labels.write_text(
        "request_id,label\n"
        + "".join(f"r{i},{'leave' if i % 5 else 'stay'}\n" for i in range(100))
        + "r999,leave\nr5,maybe\n"
    )
    code, out, err = run(capsys, "feedback", model, str(labels))
    assert code == 0, err
    assert out.startswith(f"102 label(s) stored for {model}: 100 match a logged request. 1 name a request id")
    assert "r999" in out and "'maybe' is not one of the classes stay, leave" in out

    code, out, err = run(capsys, "performance", model, "--json")
    assert code == 0, err
    measured = json.loads(out)
    assert measured["estimated"] is False and measured["labelled_rows"] == 100
    assert measured["value"] == pytest.approx(0.8) and measured["delta"] == pytest.approx(-0.1)
    assert measured["degraded"] is True
    code, out, _ = run(capsys, "performance", model, "--tolerance", "0.15")
    assert code == 0 and "0.8 on 100 labelled rows against 0.9 at registration (within tolerance" in out

    code, out, err = run(capsys, "feedback", model, str(tmp_path / "missing.csv"))
    # (the path's "test" may be masked: the S3 tests' secret key is "test")
    assert code == 2 and err.endswith("missing.csv: no such file.\n") and err.count("\n") == 1
