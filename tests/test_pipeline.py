"""The real pipeline through KFP's local runner, the compiled IR, and the CLI contract."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import EXAMPLES, REPO

ISSUEOPS = [sys.executable, "-m", "issueops.cli"]


def cli(*args, home: Path, stdin: str | None = None, env: dict | None = None):
    environ = {**os.environ, "ISSUEOPS_HOME": str(home), **(env or {})}
    return subprocess.run(
        [*ISSUEOPS, *args], capture_output=True, text=True, env=environ, input=stdin, cwd=REPO, timeout=600
    )


def test_breast_cancer_random_forest_passes_end_to_end(home):
    done = cli("run", str(EXAMPLES / "random_forest_classification.yaml"), "--json", home=home)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["decision"] == "pass"
    assert result["metrics"]["accuracy"] >= 0.9
    assert result["evaluation_metric"] == "accuracy" and result["threshold"] == 0.9
    run_id = result["run_id"]
    store = home / "store"
    for key in (
        f"models/{run_id}/model.joblib",
        f"evaluations/{run_id}/results.json",
        f"evaluations/{run_id}/confusion_matrix.png",
        f"processed/{run_id}/metadata.json",
    ):
        assert (store / key).exists(), key
    steps = {s["name"]: s["status"] for s in result["steps"]}
    assert {k: steps[k] for k in ("prepare_data", "train", "evaluate", "judge")} == dict.fromkeys(
        ("prepare_data", "train", "evaluate", "judge"), "done"
    )
    assert "Traceback" not in done.stderr


def test_xgboost_regression_below_threshold_asks_for_retrain(home, tmp_path):
    body = tmp_path / "issue.md"
    body.write_text(
        "Train please\n\n```yaml\nlearning_type: supervised\nalgorithm: xgboost\ntask_type: regression\n"
        "dataset_id: sklearn:diabetes\nhyperparameters: {n_estimators: 50, max_depth: 3}\n"
        "evaluation_threshold: 0.9\n```\n"
    )
    done = cli("run", str(body), "--json", home=home)
    assert done.returncode == 3, done.stderr
    result = json.loads(done.stdout)
    assert result["decision"] == "retrain" and result["evaluation_metric"] == "r2"
    assert set(result["metrics"]) == {"r2", "rmse", "mae", "mape"}
    assert "retries left" in result["message"]


def test_human_summary_and_last_attempt_fails(home, tmp_path):
    body = tmp_path / "spec.yaml"
    body.write_text(
        "learning_type: supervised\nalgorithm: linear_regression\ndataset_id: sklearn:diabetes\n"
        "evaluation_metric: rmse\nevaluation_threshold: 10\nmax_retry: 1\n"
    )
    done = cli("run", str(body), "--attempt", "2", home=home)
    assert done.returncode == 4, done.stderr
    assert "decision   FAIL" in done.stdout and "after 2 attempts" in done.stdout
    assert "prepare_data" in done.stderr  # progress


BAD_BODIES = {
    "malformed-yaml": ("learning_type: supervised\nalgorithm: [oops\n", "not valid YAML"),
    "no-spec": ("Could you train something nice?", "No training spec found"),
    "unknown-algorithm": ("learning_type: supervised\nalgorithm: svm\ndataset_id: sklearn:iris", "svm"),
    "bad-hyperparameter": (
        "learning_type: supervised\nalgorithm: random_forest\ndataset_id: sklearn:iris\n"
        "hyperparameters: {trees: 5}",
        "not known for random_forest",
    ),
    "threshold-out-of-range": (
        "learning_type: supervised\nalgorithm: random_forest\ndataset_id: sklearn:iris\n"
        "evaluation_threshold: 85",
        "outside [0, 1]",
    ),
    "missing-dataset": (
        "learning_type: supervised\nalgorithm: random_forest\ndataset_id: nope-001",
        "not found",
    ),
    "path-traversal": (
        "learning_type: supervised\nalgorithm: random_forest\ndataset_id: ../../etc/passwd",
        "outside the allowed data roots",
    ),
    "oversized": ("learning_type: supervised\n" + "x" * 5_000_000, "64 KiB"),
}


@pytest.mark.parametrize("case", BAD_BODIES, ids=list(BAD_BODIES))
def test_bad_input_exits_2_with_a_sentence_and_writes_no_model(home, tmp_path, case):
    text, expected = BAD_BODIES[case]
    body = tmp_path / "body.md"
    body.write_text(text)
    for command in (("validate", str(body)), ("run", str(body))):
        done = cli(*command, home=home)
        assert done.returncode == 2, (command, done.stderr)
        assert expected in done.stderr
        assert "Traceback" not in done.stderr and done.stdout == ""
    assert not (home / "store" / "models").exists()


def test_bad_csv_exits_2_without_running(home, tmp_path):
    (tmp_path / "three.csv").write_text("a,b,label\n1,2,x\n3,4,y\n5,6,x\n")
    body = tmp_path / "body.yaml"
    body.write_text(
        f"learning_type: supervised\nalgorithm: random_forest\ndataset_id: {tmp_path / 'three.csv'}\n"
    )
    done = cli("run", str(body), "--json", home=home, env={"ISSUEOPS_DATA_ROOTS": str(tmp_path)})
    assert done.returncode == 2 and "3 usable rows" in done.stderr
    assert not (home / "store" / "models").exists()


def test_cli_argument_errors(home):
    missing = cli("run", "/nonexistent/spec.yaml", home=home)
    assert missing.returncode == 2 and "no such file" in missing.stderr
    usage = cli("frobnicate", home=home)
    assert usage.returncode == 2 and "invalid choice" in usage.stderr
    valid = cli(
        "validate",
        "-",
        "--json",
        home=home,
        stdin=(EXAMPLES / "random_forest_classification.yaml").read_text(),
    )
    assert valid.returncode == 0 and json.loads(valid.stdout)["algorithm"] == "random_forest"


def test_every_example_is_valid(home):
    for example in sorted(EXAMPLES.glob("*.yaml")):
        done = cli("validate", str(example), home=home)
        assert done.returncode == 0, (example.name, done.stderr)


def test_compiled_ir_has_every_component_the_condition_and_policies(home, tmp_path):
    done = cli("compile", "-o", str(tmp_path), home=home)
    assert done.returncode == 0, done.stderr
    docs = list(yaml.safe_load_all((tmp_path / "issueops-training.yaml").read_text()))
    spec, platform = docs[0], (docs[1] if len(docs) > 1 else {})
    executors = spec["deploymentSpec"]["executors"]
    for name in ("prepare-data", "train", "evaluate", "judge"):
        assert f"exec-{name}" in executors
        assert "ghcr.io/issueops/issueops-components" in executors[f"exec-{name}"]["container"]["image"]
    tasks = spec["root"]["dag"]["tasks"]
    assert tasks["prepare-data"]["retryPolicy"]["maxRetryCount"] == 3
    assert tasks["train"]["retryPolicy"]["maxRetryCount"] == 1
    assert "retryPolicy" not in tasks["judge"]
    whole = json.dumps(spec)
    for name in ("register", "promote", "write-history", "notify", "rollback"):
        assert f"exec-{name}" in executors
    policies = [c["triggerPolicy"] for c in _tasks(spec) if "triggerPolicy" in c]
    conditions = [p["condition"] for p in policies if "condition" in p]
    assert any("'pass'" in c for c in conditions) and any("'retrain'" in c for c in conditions)
    # notify runs once write_history has ended, whether or not its commit succeeded
    assert sum(p.get("strategy") == "ALL_UPSTREAM_TASKS_COMPLETED" for p in policies) == 3
    assert "decision" in whole
    timeouts = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert timeouts["exec-train"]["activeDeadlineSeconds"] == "3600"


def test_every_task_reads_settings_and_credentials_on_a_cluster(home, tmp_path):
    """The operator's ConfigMap and the Secrets reach every step's pod (optional: a key left out
    keeps its default), so a run on a cluster writes to the same S3 and MLflow as the operator."""
    done = cli("compile", "-o", str(tmp_path), home=home)
    assert done.returncode == 0, done.stderr
    spec, platform = yaml.safe_load_all((tmp_path / "issueops-training.yaml").read_text())
    configured = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(configured) == set(spec["deploymentSpec"]["executors"])
    operator_keys = set(yaml.safe_load((REPO / "manifests/operator/configmap.yaml").read_text())["data"])
    for executor in configured.values():
        [settings] = executor["configMapAsEnv"]
        assert settings["configMapName"] == "issueops-config" and settings["optional"] is True
        passed = {k["configMapKey"] for k in settings["keyToEnv"]}
        assert {
            "ISSUEOPS_S3_BUCKET",
            "ISSUEOPS_S3_ENDPOINT",
            "MLFLOW_TRACKING_URI",
            "GITHUB_REPOSITORY",
        } <= passed
        assert passed.isdisjoint({"ISSUEOPS_KFP_HOST", "ISSUEOPS_ALLOWLIST"})  # the operator's alone
        secrets = {s["secretName"]: {k["envVar"] for k in s["keyToEnv"]} for s in executor["secretAsEnv"]}
        assert all(s["optional"] for s in executor["secretAsEnv"])
        assert secrets["issueops-s3"] == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
        assert secrets["issueops-github"] == {"GITHUB_TOKEN"}
        assert "ISSUEOPS_SLACK_WEBHOOK_URL" in secrets["issueops-notify"]
    assert operator_keys & passed == operator_keys - {
        "ISSUEOPS_KFP_HOST",
        "ISSUEOPS_KFP_EXPERIMENT",
        "ISSUEOPS_MAX_RUNNING",
        "ISSUEOPS_OPERATOR_TIMEOUT",
        "ISSUEOPS_ALLOWLIST",
    }


def _tasks(spec: dict) -> list[dict]:
    """Every task of the compiled pipeline, in the root DAG and in the condition sub-DAGs."""
    dags = [spec["root"]] + list(spec["components"].values())
    return [task for dag in dags for task in dag.get("dag", {}).get("tasks", {}).values()]


@pytest.mark.parametrize("command", [["algorithms", "--markdown"], ["registry", "list", "--json"]])
def test_a_reader_that_goes_away_ends_the_command_quietly(home, command):
    """`issueops ... | head`: the pipe closes before the output is written; no error is printed."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before a byte is written
    try:
        done = subprocess.run(
            [*ISSUEOPS, *command],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "ISSUEOPS_HOME": str(home)},
            cwd=REPO,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert "BrokenPipe" not in done.stderr and "error" not in done.stderr
    assert done.returncode == 141  # as a shell reports a command stopped by a closed pipe
